//! An MQTT 5 connection made here: TCP (and TLS), CONNECT and CONNACK with rumqttc's
//! packets, then rumqttc's state machine over a buffered socket.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5::{ConnAck, Connect, ConnectReturnCode, Packet};
use rumqttc::v5::mqttbytes::{Error as Decode, QoS};
use rumqttc::v5::{ConnectionError, Event, MqttOptions, MqttState, Request, StateError};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::error::Elapsed;
use tokio_rustls::TlsConnector;

use super::Connection;

/// Bytes read from the socket at least at once.
const READ_CHUNK: usize = 4096;

trait Socket: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Socket for T {}

pub(in crate::uplink) struct V5 {
    pub(in crate::uplink) options: MqttOptions,
    pub(in crate::uplink) state: MqttState,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The largest packet the broker may send (advertised in the CONNECT).
    max_incoming: u32,
    /// Ours, kept here: rumqttc's MQTT 5 options refuse one under 5 s, and 0 (off).
    keep_alive: Duration,
    network: Option<Network>,
    /// The broker's Server Keep Alive, which replaces ours for this connection.
    server_keep_alive: Option<Duration>,
}

impl V5 {
    pub(in crate::uplink) fn new(
        options: MqttOptions,
        tls: Option<Arc<rustls::ClientConfig>>,
        max_incoming: u32,
        keep_alive: Duration,
    ) -> V5 {
        let inflight = options
            .get_outgoing_inflight_upper_limit()
            .unwrap_or(u16::MAX);
        V5 {
            state: MqttState::new(inflight, false),
            options,
            tls,
            max_incoming,
            keep_alive,
            network: None,
            server_keep_alive: None,
        }
    }

    fn network(&mut self) -> &mut Network {
        self.network.as_mut().expect("connected")
    }

    async fn establish(&mut self) -> Result<(Network, ConnAck), ConnectionError> {
        let (host, port) = self.options.broker_address();
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        tcp.set_nodelay(true)?;
        let socket: Box<dyn Socket> = match &self.tls {
            None => Box::new(tcp),
            Some(config) => {
                let name = ServerName::try_from(host)
                    .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
                Box::new(
                    TlsConnector::from(config.clone())
                        .connect(name, tcp)
                        .await?,
                )
            }
        };
        let mut network = Network::new(socket, self.max_incoming);
        let options = &self.options;
        let connect = Connect {
            client_id: options.client_id(),
            keep_alive: u16::try_from(self.keep_alive.as_secs()).unwrap_or(u16::MAX),
            clean_start: options.clean_start(),
            properties: options.connect_properties(),
        };
        network.write(Packet::Connect(
            connect,
            options.last_will(),
            options.credentials(),
        ))?;
        network.flush().await?;
        match network.next_packet().await? {
            Packet::ConnAck(connack) if connack.code == ConnectReturnCode::Success => {
                Ok((network, connack))
            }
            Packet::ConnAck(connack) => Err(ConnectionError::ConnectionRefused(connack.code)),
            packet => Err(ConnectionError::NotConnAck(Box::new(packet))),
        }
    }
}

impl Connection for V5 {
    type Request = Request;
    type Event = Event;
    type Error = ConnectionError;

    fn connected(&self) -> bool {
        self.network.is_some()
    }

    async fn connect(&mut self) -> Result<Event, ConnectionError> {
        let timeout = self.timeout();
        let (mut network, connack) = tokio::time::timeout(timeout, self.establish()).await??;
        let properties = connack.properties.as_ref();
        network.max_outgoing = properties.and_then(|p| p.max_packet_size);
        self.server_keep_alive = properties
            .and_then(|p| p.server_keep_alive)
            .map(|secs| Duration::from_secs(secs.into()));
        if let Some(expiry) = properties.and_then(|p| p.session_expiry_interval) {
            self.options.set_session_expiry_interval(Some(expiry));
        }
        self.state
            .handle_incoming_packet(Packet::ConnAck(connack))?;
        self.network = Some(network);
        Ok(self.state.events.pop_front().expect("the CONNACK's event"))
    }

    fn next_event(&mut self) -> Option<Event> {
        self.state.events.pop_front()
    }

    async fn read(&mut self) -> Result<(), ConnectionError> {
        let network = self.network.as_mut().expect("connected");
        Ok(network.read(&mut self.state).await?)
    }

    fn held_back(&self, request: &Request) -> bool {
        self.state.collision.is_some()
            && matches!(request, Request::Publish(p) if p.qos != QoS::AtMostOnce)
    }

    async fn write(&mut self, request: Request) -> Result<(), ConnectionError> {
        if let Some(packet) = self.state.handle_outgoing_packet(request)? {
            self.network().write(packet)?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ConnectionError> {
        Ok(self.network().flush().await?)
    }

    fn ping() -> Request {
        Request::PingReq
    }

    fn keep_alive(&self) -> Duration {
        self.server_keep_alive.unwrap_or(self.keep_alive)
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.options.connection_timeout())
    }

    fn timed_out(elapsed: Elapsed) -> ConnectionError {
        ConnectionError::Timeout(elapsed)
    }

    fn requests_done() -> ConnectionError {
        ConnectionError::RequestsDone
    }

    fn drop_connection(&mut self) {
        self.network = None;
        self.state.clean();
        self.state.collision = None;
    }
}

/// A socket with a read buffer that packets are cut from and a write buffer that
/// requests are encoded into until the flush.
struct Network {
    socket: Box<dyn Socket>,
    read: BytesMut,
    write: BytesMut,
    max_incoming: u32,
    /// The broker's Maximum Packet Size.
    max_outgoing: Option<u32>,
}

impl Network {
    fn new(socket: Box<dyn Socket>, max_incoming: u32) -> Network {
        Network {
            socket,
            read: BytesMut::with_capacity(READ_CHUNK),
            write: BytesMut::with_capacity(READ_CHUNK),
            max_incoming,
            max_outgoing: None,
        }
    }

    /// A complete packet from the read buffer; `None` until one has arrived. A packet
    /// over the limit is refused from its header, before it is buffered.
    fn cut(&mut self) -> Result<Option<Packet>, StateError> {
        match Packet::read(&mut self.read, Some(self.max_incoming)) {
            Ok(packet) => Ok(Some(packet)),
            Err(Decode::InsufficientBytes(missing)) => {
                self.read.reserve(missing.max(READ_CHUNK));
                Ok(None)
            }
            Err(error) => Err(StateError::Deserialization(error)),
        }
    }

    /// Fills the read buffer from the socket. Cancel-safe: bytes read stay buffered.
    async fn fill(&mut self) -> Result<(), StateError> {
        if self.socket.read_buf(&mut self.read).await? == 0 {
            return Err(StateError::ConnectionAborted);
        }
        Ok(())
    }

    async fn next_packet(&mut self) -> Result<Packet, StateError> {
        loop {
            if let Some(packet) = self.cut()? {
                return Ok(packet);
            }
            self.fill().await?;
        }
    }

    /// Waits for at least one packet, then hands `state` every complete packet read;
    /// their answers are buffered for the next flush. Cancel-safe.
    async fn read(&mut self, state: &mut MqttState) -> Result<(), StateError> {
        let first = self.next_packet().await?;
        let mut next = Some(first);
        while let Some(packet) = next {
            if let Some(answer) = state.handle_incoming_packet(packet)? {
                self.write(answer)?;
            }
            next = self.cut()?;
        }
        Ok(())
    }

    fn write(&mut self, packet: Packet) -> Result<(), StateError> {
        packet
            .write(&mut self.write, self.max_outgoing)
            .map_err(StateError::Deserialization)?;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), StateError> {
        if !self.write.is_empty() {
            self.socket.write_all(&self.write).await?;
            self.write.clear();
        }
        self.socket.flush().await?;
        Ok(())
    }
}

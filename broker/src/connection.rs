//! One task per client connection: the CONNECT handshake, then a loop that reads packets,
//! acts on them, and writes what the session has to send. The task owns the socket and its
//! buffers; other tasks reach it only through its session (queue + wake-up signal).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use bytestring::ByteString;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::timeout;

use crate::acl::Identity;
use crate::codec::{
    self, ConnAck, Connect, ConnectReturnCode, LastWill, Packet, PubAck, PubComp, PubRec, PubRel,
    Publish, QoS, SubAck, Subscribe, SubscribeReturnCode, UnsubAck, Unsubscribe,
};
use crate::config::AnonymousPolicy;
use crate::context::BrokerContext;
use crate::message::Message;
use crate::metrics::LocalCounters;
use crate::persistence::{NotDurable, Op};
use crate::platform::status::Action;
use crate::platform::{Admission, Inbound, PlatformClient};
use crate::registry::{ConnectionSignal, Kick, Link, Session};
use crate::router::MatchBuffer;
use crate::session::{Acked, Outgoing};
use crate::transport::{ClientStream, Upgrade};

/// Output buffered before the task stops reading from the client and taking messages from
/// its session: a client that does not read costs at most about this much.
const HIGH_WATER: usize = 64 * 1024;
/// Free read space below which the read buffer grows before a read.
const MIN_READ_SPACE: usize = 1024;
/// Bytes read per system call when the client sends a lot.
const READ_SIZE: usize = 8 * 1024;
/// Time left to write the last bytes (a CONNACK refusal, answers before DISCONNECT).
const LINGER: Duration = Duration::from_millis(500);

/// Where the connection came in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ListenerInfo {
    pub local: SocketAddr,
    pub loopback: bool,
}

/// Why a connection ended; decides whether the will is published.
#[derive(Debug)]
enum End {
    Disconnect,
    Closed,
    Io(io::Error),
    Protocol(String),
    Kicked(Kick),
    NotDurable,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Disconnect => f.write_str("DISCONNECT"),
            End::Closed => f.write_str("closed by the client"),
            End::Io(error) => write!(f, "I/O error: {error}"),
            End::Protocol(what) => write!(f, "protocol error: {what}"),
            End::Kicked(Kick::TakenOver) => f.write_str("taken over by a new connection"),
            End::Kicked(Kick::Shutdown) => f.write_str("broker shutdown"),
            End::Kicked(Kick::KeepaliveExpired) => f.write_str("keepalive expired"),
            End::NotDurable => f.write_str("persistence failed"),
        }
    }
}

/// What woke the connection task.
enum Event {
    Signal,
    Readable,
    Writable,
    Failed(io::Error),
}

impl End {
    fn publishes_will(&self) -> bool {
        !matches!(self, End::Disconnect | End::Kicked(Kick::Shutdown))
    }
}

impl From<NotDurable> for End {
    fn from(_: NotDurable) -> Self {
        End::NotDurable
    }
}

/// A connection just accepted, with what serving it needs. Boxed: an async function keeps
/// its arguments for its whole life, and every idle connection would pay for them.
pub(crate) struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub listener: ListenerInfo,
    pub ctx: Arc<BrokerContext>,
    /// Its place under `max_connections`.
    pub slot: OwnedSemaphorePermit,
    /// TLS and WebSocket handshakes to run first (none for plain MQTT).
    pub upgrade: Option<Arc<Upgrade>>,
}

/// Serves one accepted TCP connection until it ends.
///
/// The handshake, packet handling and closing run as boxed futures: a task's memory is the
/// size of its largest state, and an idle connection should only pay for waiting.
pub(crate) async fn serve(accepted: Box<Accepted>) {
    let Some(mut connection) = Box::pin(open(accepted)).await else {
        return;
    };
    let end = connection.run().await;
    Box::pin(connection.finish(end)).await;
}

/// Reads the CONNECT (within `connect_timeout`) and hands it to [`handshake`].
async fn open(accepted: Box<Accepted>) -> Option<Connection> {
    let Accepted {
        stream,
        peer,
        listener,
        ctx,
        slot,
        upgrade,
    } = *accepted;
    let mut stream = crate::transport::establish(upgrade, stream, peer, &ctx).await?;
    let mut rbuf = BytesMut::new();
    let first = tokio::select! {
        first = timeout(ctx.limits.connect_timeout, read_first_packet(&mut stream, &mut rbuf, ctx.max_packet_size())) => first,
        () = ctx.shutdown.cancelled() => return None,
    };
    let connect = match first {
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT in time");
            return None;
        }
        Ok(Err(FirstPacketError::Io(error))) => {
            tracing::debug!(%peer, %error, "connection closed before CONNECT");
            return None;
        }
        Ok(Err(FirstPacketError::Codec(error))) => {
            tracing::info!(%peer, %error, "malformed first packet");
            if let Some(code) = error.connack_code() {
                refuse(&mut stream, code).await;
            }
            return None;
        }
        Ok(Ok(Packet::Connect(connect))) => connect,
        Ok(Ok(other)) => {
            tracing::info!(%peer, packet = other.name(), "first packet is not CONNECT");
            return None;
        }
    };
    if rbuf.is_empty() {
        // The CONNECT's buffer goes with the packet (its strings are copied below).
        rbuf = BytesMut::new();
    }
    handshake(stream, peer, listener, ctx, slot, connect, rbuf).await
}

enum FirstPacketError {
    Io(io::Error),
    Codec(codec::Error),
}

async fn read_first_packet(
    stream: &mut ClientStream,
    rbuf: &mut BytesMut,
    max: usize,
) -> Result<Packet, FirstPacketError> {
    loop {
        if let Some(packet) = codec::decode(rbuf, max).map_err(FirstPacketError::Codec)? {
            return Ok(packet);
        }
        rbuf.reserve(256);
        match stream.read_buf(rbuf).await {
            Ok(0) => return Err(FirstPacketError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(error) => return Err(FirstPacketError::Io(error)),
        }
    }
}

async fn refuse(stream: &mut ClientStream, code: ConnectReturnCode) {
    let mut buf = BytesMut::new();
    let connack = Packet::ConnAck(ConnAck {
        session_present: false,
        code,
    });
    if codec::encode(&connack, &mut buf).is_ok() {
        let _ = timeout(LINGER, async {
            stream.write_all(&buf).await?;
            stream.flush().await
        })
        .await;
    }
}

/// Checks a CONNECT and attaches the client to its session; `None` when refused.
async fn handshake(
    mut stream: ClientStream,
    peer: SocketAddr,
    listener: ListenerInfo,
    ctx: Arc<BrokerContext>,
    slot: OwnedSemaphorePermit,
    connect: Connect,
    rbuf: BytesMut,
) -> Option<Connection> {
    let Connect {
        clean_session,
        keep_alive,
        client_id,
        will,
        username,
        password,
        ..
    } = connect;
    let client_id = if client_id.is_empty() {
        if !clean_session {
            tracing::info!(%peer, "empty client id with clean session 0 refused");
            refuse(&mut stream, ConnectReturnCode::IdentifierRejected).await;
            return None;
        }
        ByteString::from(format!("auto-{:016x}", rand::thread_rng().gen::<u64>()))
    } else {
        // Kept for the session's life: not as a slice pinning the CONNECT's read buffer.
        ByteString::from(&*client_id)
    };
    let username = username.map(|name| ByteString::from(&*name));
    let will = will.map(|will| {
        Box::new(LastWill {
            topic: ByteString::from(&*will.topic),
            payload: bytes::Bytes::copy_from_slice(&will.payload),
            ..will
        })
    });
    let mut verified = stream.client_verified();
    let mut platform = None;
    let (client_id, clean_session, will) = match &ctx.platform {
        None => (client_id, clean_session, will),
        Some(platform_mode) => {
            let admission = Admission {
                client_id: &client_id,
                username: username.as_deref(),
                password: password.as_deref(),
                will,
                clean_session,
                peer,
                local: listener.local,
                transport: stream.transport(),
            };
            match platform_mode.admit(admission).await {
                Ok(admitted) => {
                    verified |= admitted.authenticated;
                    platform = Some(admitted.client);
                    (admitted.session_name, admitted.clean_session, admitted.will)
                }
                Err(refused) => {
                    tracing::info!(%peer, %client_id, reason = %refused.reason, "platform client refused");
                    refuse(&mut stream, refused.code).await;
                    return None;
                }
            }
        }
    };

    let authenticated = match (&ctx.passwords, &username) {
        (Some(passwords), Some(user)) => {
            if !check_password(
                &ctx,
                passwords.clone(),
                user.clone(),
                password.unwrap_or_default(),
            )
            .await
            {
                tracing::info!(%peer, %client_id, user = %user, "bad user name or password");
                refuse(&mut stream, ConnectReturnCode::BadUserNameOrPassword).await;
                return None;
            }
            true
        }
        _ => false,
    };
    let anonymous_allowed = match ctx.anonymous {
        AnonymousPolicy::Always => true,
        AnonymousPolicy::Never => false,
        AnonymousPolicy::Loopback => listener.loopback,
    };
    if !verified && !authenticated && !anonymous_allowed {
        tracing::info!(%peer, %client_id, listener = %listener.local, "anonymous client refused");
        refuse(&mut stream, ConnectReturnCode::NotAuthorized).await;
        return None;
    }
    if let (Some(acl), Some(will)) = (&ctx.router.acl, &will) {
        let who = Identity {
            username: username.as_deref(),
            client_id: &client_id,
        };
        if !acl.can_publish(who, &will.topic) {
            tracing::info!(%peer, %client_id, topic = %will.topic, "will topic not allowed by the ACL");
            refuse(&mut stream, ConnectReturnCode::NotAuthorized).await;
            return None;
        }
    }
    if will
        .as_ref()
        .is_some_and(|will| will.payload.len() > ctx.limits.max_payload)
    {
        tracing::info!(%peer, %client_id, "will payload exceeds max_payload");
        return None;
    }

    let signal = Arc::new(ConnectionSignal::new(
        keepalive_timeout(keep_alive, ctx.limits.max_keepalive),
        ctx.now_ms(),
    ));
    let link = Link {
        signal: signal.clone(),
    };
    let permit = match &ctx.router.store {
        Some(store) => Some(store.reserve(1).await.ok()?),
        None => None,
    };
    let attached = ctx.registry.attach(
        client_id.clone(),
        clean_session,
        link,
        username.clone(),
        &ctx.router.subscriptions,
        permit,
    );
    let attached = match attached {
        Ok(attached) => attached,
        Err(error) => {
            tracing::warn!(%peer, %client_id, %error, "connection refused");
            refuse(&mut stream, ConnectReturnCode::ServerUnavailable).await;
            return None;
        }
    };
    ctx.metrics
        .clients_connected
        .fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%peer, %client_id, clean_session, keep_alive, session_present = attached.session_present, "client connected");

    let mut connection = Connection {
        stream,
        rbuf,
        wbuf: BytesMut::new(),
        session: attached.session,
        signal,
        will,
        counters: LocalCounters::default(),
        matches: None,
        ctx,
        _slot: slot,
        platform,
    };
    if let Some(client) = &connection.platform {
        crate::platform::status::publish(&connection.ctx, client, Action::Connect, None, true)
            .await;
    }
    connection.write_packet(&Packet::ConnAck(ConnAck {
        session_present: attached.session_present,
        code: ConnectReturnCode::Accepted,
    }));
    if attached.session_present {
        let mut resend = Vec::new();
        connection.session.inner.lock().state.resend(&mut resend);
        connection.write_outgoing(resend);
    }
    Some(connection)
}

/// When a silent client is dropped: 1.5 times its keepalive, capped by `max_keepalive`
/// (which also applies to clients asking for none when it is configured below the
/// protocol maximum). `None`: never.
fn keepalive_timeout(requested: u16, max: u16) -> Option<Duration> {
    let seconds = match requested {
        0 if max == u16::MAX => return None,
        0 => max,
        requested => requested.min(max),
    };
    Some(Duration::from_millis(u64::from(seconds) * 1500))
}

async fn check_password(
    ctx: &BrokerContext,
    passwords: Arc<crate::auth::PasswordFile>,
    user: ByteString,
    password: bytes::Bytes,
) -> bool {
    let Ok(_slot) = ctx.password_checks.acquire().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || passwords.verify(&user, &password))
        .await
        .unwrap_or(false)
}

/// An accepted client. Kept small: every idle connection holds one.
struct Connection {
    stream: ClientStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    session: Arc<Session>,
    signal: Arc<ConnectionSignal>,
    will: Option<Box<LastWill>>,
    counters: LocalCounters,
    /// Scratch space for routing, allocated once this client publishes.
    matches: Option<Box<MatchBuffer>>,
    ctx: Arc<BrokerContext>,
    _slot: OwnedSemaphorePermit,
    /// Platform mode: who the client is, its topic space and status facts.
    platform: Option<Box<PlatformClient>>,
}

impl Connection {
    async fn run(&mut self) -> End {
        if self.ctx.shutdown.is_cancelled() {
            return End::Kicked(Kick::Shutdown);
        }
        // Packets that came in the same read as the CONNECT.
        if let Some(end) = Box::pin(self.process_packets()).await {
            return end;
        }
        loop {
            if let Some(end) = self.pull_outgoing() {
                return end;
            }
            if let Some(client) = self.platform.as_deref_mut() {
                client.count(&self.counters);
            }
            self.counters.flush(&self.ctx.metrics);
            match std::future::poll_fn(|cx| self.poll_event(cx)).await {
                Event::Signal => {
                    if let Some(kick) = self.signal.kicked() {
                        return End::Kicked(kick);
                    }
                }
                Event::Writable => {
                    if let Err(error) = self.write() {
                        return End::Io(error);
                    }
                }
                Event::Readable => {
                    match self.read() {
                        Ok(true) => {}
                        Ok(false) => return End::Closed,
                        Err(error) => return End::Io(error),
                    }
                    let routed_before = self.counters.messages_received;
                    if let Some(end) = Box::pin(self.process_packets()).await {
                        return end;
                    }
                    if self.counters.messages_received != routed_before {
                        // Let the subscribers just woken send before reading more: a
                        // flooding publisher would otherwise fill their queues first.
                        tokio::task::yield_now().await;
                    }
                }
                Event::Failed(error) => return End::Io(error),
            }
        }
    }

    /// What the connection has to do next. Polled in place (no stored futures), so that a
    /// waiting connection costs little memory. Writing comes before reading: a client
    /// that floods us must still get its acknowledgements.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        if self.signal.poll_woken(cx) {
            return Poll::Ready(Event::Signal);
        }
        if !self.wbuf.is_empty() {
            match self.stream.poll_write_ready(cx) {
                Poll::Ready(Ok(())) => return Poll::Ready(Event::Writable),
                Poll::Ready(Err(error)) => return Poll::Ready(Event::Failed(error)),
                Poll::Pending => {}
            }
        }
        if self.wbuf.len() < HIGH_WATER {
            match self.stream.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => return Poll::Ready(Event::Readable),
                Poll::Ready(Err(error)) => return Poll::Ready(Event::Failed(error)),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }

    /// Reads what the socket has; false at end of stream.
    fn read(&mut self) -> io::Result<bool> {
        if self.rbuf.capacity() - self.rbuf.len() < MIN_READ_SPACE {
            self.rbuf.reserve(READ_SIZE);
        }
        match self.stream.try_read_buf(&mut self.rbuf) {
            Ok(0) => Ok(false),
            Ok(read) => {
                self.counters.bytes_received += read as u64;
                self.signal.heard(self.ctx.now_ms());
                Ok(true)
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(true),
            Err(error) => Err(error),
        }
    }

    fn write(&mut self) -> io::Result<()> {
        match self.stream.try_write(&self.wbuf) {
            Ok(written) => {
                self.counters.bytes_sent += written as u64;
                self.wbuf.advance(written);
                if self.wbuf.is_empty() {
                    // Idle connections keep no buffer.
                    self.wbuf = BytesMut::new();
                }
                Ok(())
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(error) => Err(error),
        }
    }

    async fn process_packets(&mut self) -> Option<End> {
        loop {
            match codec::decode(&mut self.rbuf, self.ctx.max_packet_size()) {
                Ok(Some(packet)) => {
                    if let Some(end) = self.handle(packet).await {
                        return Some(end);
                    }
                }
                Ok(None) => break,
                Err(error) => return Some(End::Protocol(error.to_string())),
            }
        }
        if self.rbuf.is_empty() {
            // Messages still hold slices of the old buffer; this connection lets it go.
            self.rbuf = BytesMut::new();
        }
        None
    }

    async fn handle(&mut self, packet: Packet) -> Option<End> {
        let result = match packet {
            Packet::Publish(publish) => self.on_publish(publish).await,
            Packet::PubAck(PubAck { pkid }) => self.on_ack(pkid, AckKind::Ack).await,
            Packet::PubRec(PubRec { pkid }) => self.on_ack(pkid, AckKind::Rec).await,
            Packet::PubComp(PubComp { pkid }) => self.on_ack(pkid, AckKind::Comp).await,
            Packet::PubRel(PubRel { pkid }) => self.on_pubrel(pkid).await,
            Packet::Subscribe(subscribe) => self.on_subscribe(subscribe).await,
            Packet::Unsubscribe(unsubscribe) => self.on_unsubscribe(unsubscribe).await,
            Packet::PingReq => {
                self.write_packet(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect => Err(End::Disconnect),
            Packet::Connect(_) => Err(End::Protocol("second CONNECT".into())),
            other => Err(End::Protocol(format!(
                "{} is not sent by clients",
                other.name()
            ))),
        };
        result.err()
    }

    /// Whether the ACL (if any) lets this client publish to `topic`.
    fn may_publish(&self, topic: &str) -> bool {
        let Some(acl) = &self.ctx.router.acl else {
            return true;
        };
        let inner = self.session.inner.lock();
        acl.can_publish(
            Identity {
                username: inner.username.as_deref(),
                client_id: &self.session.client_id,
            },
            topic,
        )
    }

    /// Whether the ACL (if any) lets this client subscribe to `filter`.
    fn may_subscribe(&self, filter: &str) -> bool {
        let Some(acl) = &self.ctx.router.acl else {
            return true;
        };
        let inner = self.session.inner.lock();
        acl.can_subscribe(
            Identity {
                username: inner.username.as_deref(),
                client_id: &self.session.client_id,
            },
            filter,
        )
    }

    fn persists(&self) -> bool {
        self.ctx.router.store.is_some() && self.session.persistent
    }

    async fn on_publish(&mut self, publish: Publish) -> Result<(), End> {
        self.counters.messages_received += 1;
        if publish.payload.len() > self.ctx.limits.max_payload {
            return Err(End::Protocol(format!(
                "payload of {} bytes exceeds max_payload",
                publish.payload.len()
            )));
        }
        let publish = match self.platform.as_deref_mut() {
            None => publish,
            Some(client) => match client.inbound(publish) {
                Inbound::Route(publish) => publish,
                Inbound::Drop => return Ok(()),
                Inbound::Refuse(reason) => return Err(End::Protocol(reason)),
            },
        };
        let allowed = if publish.topic.starts_with("$SYS") {
            false
        } else {
            self.may_publish(&publish.topic)
        };
        if !allowed {
            tracing::info!(client_id = %self.session.client_id, topic = %publish.topic, "publish refused by the ACL: dropped");
        }
        let message = allowed.then(|| Arc::new(Message::from_publish(&publish)));
        match publish.qos {
            QoS::AtMostOnce => {
                if let Some(message) = message {
                    self.ctx
                        .router
                        .publish(
                            message,
                            self.matches.get_or_insert_with(Box::default),
                            false,
                        )
                        .await?;
                }
            }
            QoS::AtLeastOnce => {
                if let Some(message) = message {
                    self.ctx
                        .router
                        .publish(
                            message,
                            self.matches.get_or_insert_with(Box::default),
                            false,
                        )
                        .await?;
                }
                self.write_packet(&Packet::PubAck(PubAck::new(publish.pkid)));
            }
            QoS::ExactlyOnce => {
                let fresh = {
                    let mut inner = self.session.inner.lock();
                    if inner.state.incoming_qos2_len() >= self.ctx.limits.max_queued_messages {
                        return Err(End::Protocol(
                            "too many QoS 2 messages awaiting PUBREL".into(),
                        ));
                    }
                    inner.state.incoming_qos2(publish.pkid)
                };
                if fresh {
                    if let Err(error) = self.route_qos2(publish.pkid, message).await {
                        self.session
                            .inner
                            .lock()
                            .state
                            .incoming_pubrel(publish.pkid);
                        return Err(error.into());
                    }
                }
                self.write_packet(&Packet::PubRec(PubRec::new(publish.pkid)));
            }
        }
        Ok(())
    }

    /// Routes a new QoS 2 message, and for a persistent session records durably that its
    /// packet identifier awaits PUBREL, so that a copy sent again after a restart is not
    /// delivered twice.
    async fn route_qos2(
        &mut self,
        pkid: u16,
        message: Option<Arc<Message>>,
    ) -> Result<(), NotDurable> {
        let persists = self.persists();
        if let (Some(store), true) = (&self.ctx.router.store, persists) {
            store
                .send(Op::IncomingQos2 {
                    client_id: self.session.client_id.clone(),
                    pkid,
                })
                .await?;
        }
        match message {
            Some(message) => {
                self.ctx
                    .router
                    .publish(
                        message,
                        self.matches.get_or_insert_with(Box::default),
                        persists,
                    )
                    .await
            }
            None => match (&self.ctx.router.store, persists) {
                (Some(store), true) => store.barrier().await,
                _ => Ok(()),
            },
        }
    }

    async fn on_ack(&mut self, pkid: u16, kind: AckKind) -> Result<(), End> {
        let mut permit = match (&self.ctx.router.store, self.persists()) {
            (Some(store), true) => Some(store.reserve(1).await?),
            _ => None,
        };
        {
            let mut inner = self.session.inner.lock();
            if !inner.is_linked_to(&self.signal) {
                return Ok(());
            }
            let acked = match kind {
                AckKind::Ack => inner.state.puback(pkid),
                AckKind::Rec => inner.state.pubrec(pkid),
                AckKind::Comp => inner.state.pubcomp(pkid),
            };
            let client_id = self.session.client_id.clone();
            let op = match acked {
                Acked::Completed { seq } => Some(Op::Completed { client_id, seq }),
                Acked::Released { seq } => Some(Op::Released { client_id, seq }),
                Acked::Unknown => {
                    tracing::debug!(client_id = %self.session.client_id, pkid, ?kind, "acknowledgement of nothing in flight");
                    None
                }
            };
            if let (Some(op), Some(permit)) = (op, permit.as_mut().and_then(Iterator::next)) {
                permit.send(op);
            }
        }
        drop(permit);
        if kind == AckKind::Rec {
            self.write_packet(&Packet::PubRel(PubRel::new(pkid)));
        }
        Ok(())
    }

    async fn on_pubrel(&mut self, pkid: u16) -> Result<(), End> {
        let released = self.session.inner.lock().state.incoming_pubrel(pkid);
        if let (Some(store), true) = (&self.ctx.router.store, released && self.persists()) {
            store
                .send(Op::IncomingReleased {
                    client_id: self.session.client_id.clone(),
                    pkid,
                })
                .await?;
        }
        self.write_packet(&Packet::PubComp(PubComp::new(pkid)));
        Ok(())
    }

    async fn on_subscribe(&mut self, subscribe: Subscribe) -> Result<(), End> {
        let mut return_codes = Vec::with_capacity(subscribe.filters.len());
        let mut granted = Vec::new();
        let persists = self.persists();
        for chunk in subscribe.filters.chunks(512) {
            let mut permits = match (&self.ctx.router.store, persists) {
                (Some(store), true) => Some(store.reserve(chunk.len()).await?),
                _ => None,
            };
            for filter in chunk {
                let mapped;
                let filter = match self.platform.as_deref().map(|c| c.subscription(filter)) {
                    None => filter,
                    Some(Ok(platform_filter)) => {
                        mapped = platform_filter;
                        &mapped
                    }
                    Some(Err(refusal)) => {
                        tracing::info!(client_id = %self.session.client_id, filter = %filter.filter, %refusal, "subscription refused by the platform");
                        return_codes.push(SubscribeReturnCode::Failure);
                        continue;
                    }
                };
                let allowed = self.may_subscribe(&filter.filter);
                if !allowed {
                    tracing::info!(client_id = %self.session.client_id, filter = %filter.filter, "subscription refused by the ACL");
                    return_codes.push(SubscribeReturnCode::Failure);
                    continue;
                }
                let mut inner = self.session.inner.lock();
                let known = inner.state.subscriptions().contains_key(&filter.filter);
                if inner.discarded
                    || (!known
                        && inner.state.subscriptions().len()
                            >= self.ctx.limits.max_subscriptions_per_session)
                {
                    return_codes.push(SubscribeReturnCode::Failure);
                    continue;
                }
                inner
                    .state
                    .add_subscription(filter.filter.clone(), filter.qos);
                self.ctx.router.subscriptions.write().subscribe(
                    &filter.filter,
                    self.session.id,
                    filter.qos,
                    self.session.clone(),
                );
                if let Some(permit) = permits.as_mut().and_then(Iterator::next) {
                    permit.send(Op::Subscribe {
                        client_id: self.session.client_id.clone(),
                        filter: filter.filter.clone(),
                        qos: filter.qos,
                    });
                }
                drop(inner);
                return_codes.push(SubscribeReturnCode::Success(filter.qos));
                granted.push((filter.filter.clone(), filter.qos));
            }
        }
        if let (Some(store), true) = (&self.ctx.router.store, persists && !granted.is_empty()) {
            store.barrier().await?;
        }
        self.write_packet(&Packet::SubAck(SubAck {
            pkid: subscribe.pkid,
            return_codes,
        }));
        for (filter, qos) in granted {
            self.ctx
                .router
                .deliver_retained(&self.session, &filter, qos)
                .await?;
        }
        Ok(())
    }

    async fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe) -> Result<(), End> {
        let persists = self.persists();
        for chunk in unsubscribe.filters.chunks(512) {
            let mut permits = match (&self.ctx.router.store, persists) {
                (Some(store), true) => Some(store.reserve(chunk.len()).await?),
                _ => None,
            };
            for filter in chunk {
                let mapped;
                let filter = match self.platform.as_deref().map(|c| c.unsubscription(filter)) {
                    None => filter,
                    Some(Some(platform_filter)) => {
                        mapped = platform_filter;
                        &mapped
                    }
                    Some(None) => continue,
                };
                let mut inner = self.session.inner.lock();
                if inner.state.remove_subscription(filter) {
                    self.ctx
                        .router
                        .subscriptions
                        .write()
                        .unsubscribe(filter, self.session.id);
                    if let Some(permit) = permits.as_mut().and_then(Iterator::next) {
                        permit.send(Op::Unsubscribe {
                            client_id: self.session.client_id.clone(),
                            filter: filter.clone(),
                        });
                    }
                }
            }
        }
        self.write_packet(&Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid)));
        Ok(())
    }

    /// Takes what the session has to send, as far as the output buffer has room.
    fn pull_outgoing(&mut self) -> Option<End> {
        if self.wbuf.len() >= HIGH_WATER {
            return None;
        }
        let budget = HIGH_WATER - self.wbuf.len();
        let mut outgoing = Vec::new();
        {
            let mut inner = self.session.inner.lock();
            if !inner.is_linked_to(&self.signal) {
                return Some(End::Kicked(self.signal.kicked().unwrap_or(Kick::TakenOver)));
            }
            if !inner.state.has_sendable(&self.ctx.router.limits) {
                return None;
            }
            inner
                .state
                .poll_outgoing(&self.ctx.router.limits, budget, &mut outgoing);
            if let (Some(store), true) = (&self.ctx.router.store, self.session.persistent) {
                // Packet identifiers only matter after a crash; a full channel skips them.
                for item in &outgoing {
                    if let Outgoing::Publish { publish, seq } = item {
                        if publish.qos != QoS::AtMostOnce {
                            store.try_send(Op::Sent {
                                client_id: self.session.client_id.clone(),
                                seq: *seq,
                                pkid: publish.pkid,
                            });
                        }
                    }
                }
            }
        }
        self.write_outgoing(outgoing);
        None
    }

    fn write_outgoing(&mut self, outgoing: Vec<Outgoing>) {
        // One allocation for the batch instead of growing the buffer packet by packet.
        let estimate: usize = outgoing
            .iter()
            .map(|item| match item {
                Outgoing::Publish { publish, .. } => {
                    publish.topic.len() + publish.payload.len() + 9
                }
                Outgoing::PubRel { .. } => 4,
            })
            .sum();
        self.wbuf.reserve(estimate);
        for item in &outgoing {
            match item {
                Outgoing::Publish { publish, .. } => {
                    self.counters.messages_sent += 1;
                    self.write_publish(publish);
                }
                Outgoing::PubRel { pkid } => self.write_packet(&Packet::PubRel(PubRel::new(*pkid))),
            }
        }
    }

    fn write_publish(&mut self, publish: &Publish) {
        if let Some(view) = self.platform.as_deref().and_then(|c| c.outbound(publish)) {
            self.write_packet(&Packet::Publish(view));
            return;
        }
        // Cloning a Publish clones reference counts only.
        self.write_packet(&Packet::Publish(publish.clone()));
    }

    fn write_packet(&mut self, packet: &Packet) {
        if let Err(error) = codec::encode(packet, &mut self.wbuf) {
            tracing::warn!(client_id = %self.session.client_id, %error, packet = packet.name(), "cannot encode packet");
        }
    }

    /// Ends the connection: last bytes out, session detached, will published if due.
    async fn finish(mut self, end: End) {
        if let Some(client) = self.platform.as_deref_mut() {
            client.count(&self.counters);
        }
        self.counters.flush(&self.ctx.metrics);
        match &end {
            End::Disconnect | End::Closed | End::Kicked(Kick::TakenOver | Kick::Shutdown) => {
                tracing::debug!(client_id = %self.session.client_id, reason = %end, "connection ended")
            }
            _ => {
                tracing::info!(client_id = %self.session.client_id, reason = %end, "connection closed")
            }
        }
        if !self.wbuf.is_empty() && !matches!(end, End::Io(_) | End::Closed) {
            let _ = timeout(LINGER, self.stream.write_all(&self.wbuf)).await;
        }
        let _ = self.stream.shutdown().await;
        drop(self.stream);
        {
            let mut inner = self.session.inner.lock();
            if inner.is_linked_to(&self.signal) {
                inner.link = None;
            }
        }
        if !self.session.persistent {
            self.ctx
                .registry
                .remove_clean(&self.session, &self.ctx.router.subscriptions);
        }
        self.ctx
            .metrics
            .clients_connected
            .fetch_sub(1, Ordering::Relaxed);
        if let Some(client) = self.platform.take() {
            let reason = end.to_string();
            // A taken-over client is connected again: its new status stays the retained one.
            let retain = !matches!(end, End::Kicked(Kick::TakenOver));
            crate::platform::status::publish(
                &self.ctx,
                &client,
                Action::Disconnect,
                Some(&reason),
                retain,
            )
            .await;
        }
        if let Some(will) = self.will.take().filter(|_| end.publishes_will()) {
            let message = Arc::new(Message::new(
                will.topic,
                will.payload,
                will.qos,
                will.retain,
            ));
            if let Err(error) = self
                .ctx
                .router
                .publish(
                    message,
                    self.matches.get_or_insert_with(Box::default),
                    false,
                )
                .await
            {
                tracing::warn!(client_id = %self.session.client_id, %error, "will not stored durably");
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// Which acknowledgement of an outgoing QoS 1 or 2 message arrived.
enum AckKind {
    /// PUBACK
    Ack,
    /// PUBREC
    Rec,
    /// PUBCOMP
    Comp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_is_one_and_a_half_times_capped() {
        assert_eq!(keepalive_timeout(0, u16::MAX), None);
        assert_eq!(
            keepalive_timeout(10, u16::MAX),
            Some(Duration::from_secs(15))
        );
        assert_eq!(keepalive_timeout(100, 20), Some(Duration::from_secs(30)));
        assert_eq!(keepalive_timeout(0, 20), Some(Duration::from_secs(30)));
        assert_eq!(keepalive_timeout(1, 20), Some(Duration::from_millis(1500)));
    }
}

//! What a client connection runs over: plain TCP, TLS (`mqtts`), WebSocket (`ws`) or
//! WebSocket over TLS (`wss`).
//!
//! The connection code reads and writes through [`ClientStream`], which offers the
//! readiness-style calls of a `TcpStream` (`poll_read_ready`, `try_read_buf`,
//! `poll_write_ready`, `try_write`) for every transport: plain TCP goes straight to the
//! socket, the others through [`Buffered`], which adapts any `AsyncRead + AsyncWrite`
//! stream (a TLS session, a WebSocket carrying binary frames) to those calls.

pub mod tls;
pub mod ws;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::config::{ListenerConfig, ListenerProtocol};
use crate::context::BrokerContext;

pub use tls::TransportError;

/// The transport of a connection, as the platform's status messages name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "mqtt-tcp",
            Transport::Tls => "mqtt-ssl",
            Transport::Ws => "mqtt-ws",
            Transport::Wss => "mqtt-wss",
        }
    }

    pub fn encrypted(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }
}

/// Bytes staged for an adapted stream before writers are told to wait.
const STAGE_LIMIT: usize = 16 * 1024;
/// Bytes read from an adapted stream per call.
const READ_CHUNK: usize = 4096;
/// Time a closing TLS or WebSocket session gets for its last bytes and close message: a
/// client that stopped reading must not keep the connection's task alive.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Any stream a [`Buffered`] adapts.
pub(crate) trait AsyncStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> AsyncStream for T {}

/// Readiness-style reads and writes over an `AsyncRead + AsyncWrite` stream: reads go
/// through a small read-ahead buffer, writes are staged and pushed out (and flushed)
/// whenever the connection polls for readiness.
pub(crate) struct Buffered {
    io: Box<dyn AsyncStream>,
    transport: Transport,
    /// The client presented a certificate the listener's CA vouches for.
    client_verified: bool,
    input: BytesMut,
    eof: bool,
    output: BytesMut,
    unflushed: bool,
    /// Set by the first shutdown call: when it fires, the shutdown gives up waiting.
    shutdown_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Buffered {
    pub fn new(io: Box<dyn AsyncStream>, transport: Transport, client_verified: bool) -> Self {
        Self {
            io,
            transport,
            client_verified,
            input: BytesMut::new(),
            eof: false,
            output: BytesMut::new(),
            unflushed: false,
            shutdown_deadline: None,
        }
    }

    /// Writes and flushes what is staged; ready when all of it is out.
    fn drive_output(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.output.is_empty() {
            match ready!(Pin::new(&mut self.io).poll_write(cx, &self.output)) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(written) => {
                    self.output.advance(written);
                    self.unflushed = true;
                }
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
        if self.output.capacity() > STAGE_LIMIT {
            self.output = BytesMut::new();
        }
        if self.unflushed {
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Staged output goes out first, whatever the connection waits for.
        if let Poll::Ready(Err(error)) = self.drive_output(cx) {
            return Poll::Ready(Err(error));
        }
        if !self.input.is_empty() || self.eof {
            return Poll::Ready(Ok(()));
        }
        let mut chunk = [0u8; READ_CHUNK];
        let mut buf = ReadBuf::new(&mut chunk);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
        if buf.filled().is_empty() {
            self.eof = true;
        } else {
            self.input.extend_from_slice(buf.filled());
        }
        Poll::Ready(Ok(()))
    }

    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        if !self.input.is_empty() {
            let read = self.input.len();
            buf.extend_from_slice(&self.input);
            self.input = BytesMut::new();
            return Ok(read);
        }
        if self.eof {
            return Ok(0);
        }
        Err(io::ErrorKind::WouldBlock.into())
    }

    fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.drive_output(cx) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending if self.output.len() < STAGE_LIMIT => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = STAGE_LIMIT.saturating_sub(self.output.len());
        if room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let accepted = room.min(buf.len());
        self.output.extend_from_slice(&buf[..accepted]);
        Ok(accepted)
    }
}

/// Hands a reader what is already buffered (contiguous, as `Bytes` and `BytesMut`
/// are); false when nothing was.
pub(crate) fn read_buffered(buffered: &mut impl Buf, buf: &mut ReadBuf<'_>) -> bool {
    if !buffered.has_remaining() {
        return false;
    }
    let take = buffered.chunk().len().min(buf.remaining());
    buf.put_slice(&buffered.chunk()[..take]);
    buffered.advance(take);
    true
}

impl AsyncRead for Buffered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if read_buffered(&mut this.input, buf) || this.eof {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Buffered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.drive_output(cx))?;
        let written = ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        this.unflushed = true;
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.drive_output(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let deadline = this
            .shutdown_deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(SHUTDOWN_GRACE)));
        if deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        ready!(this.drive_output(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// A client's byte stream, whatever its transport.
pub(crate) enum ClientStream {
    Tcp(TcpStream),
    Adapted(Box<Buffered>),
}

impl ClientStream {
    pub fn transport(&self) -> Transport {
        match self {
            ClientStream::Tcp(_) => Transport::Tcp,
            ClientStream::Adapted(buffered) => buffered.transport,
        }
    }

    /// Whether the client authenticated with a certificate the listener's CA vouches for.
    pub fn client_verified(&self) -> bool {
        match self {
            ClientStream::Tcp(_) => false,
            ClientStream::Adapted(buffered) => buffered.client_verified,
        }
    }

    pub fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            ClientStream::Tcp(stream) => stream.poll_read_ready(cx),
            ClientStream::Adapted(buffered) => buffered.poll_read_ready(cx),
        }
    }

    pub fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            ClientStream::Tcp(stream) => stream.try_read_buf(buf),
            ClientStream::Adapted(buffered) => buffered.try_read_buf(buf),
        }
    }

    pub fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            ClientStream::Tcp(stream) => stream.poll_write_ready(cx),
            ClientStream::Adapted(buffered) => buffered.poll_write_ready(cx),
        }
    }

    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ClientStream::Tcp(stream) => stream.try_write(buf),
            ClientStream::Adapted(buffered) => buffered.try_write(buf),
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(stream) => Pin::new(stream).poll_read(cx, buf),
            ClientStream::Adapted(buffered) => Pin::new(&mut **buffered).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Tcp(stream) => Pin::new(stream).poll_write(cx, buf),
            ClientStream::Adapted(buffered) => Pin::new(&mut **buffered).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(stream) => Pin::new(stream).poll_flush(cx),
            ClientStream::Adapted(buffered) => Pin::new(&mut **buffered).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(stream) => Pin::new(stream).poll_shutdown(cx),
            ClientStream::Adapted(buffered) => Pin::new(&mut **buffered).poll_shutdown(cx),
        }
    }
}

/// What a listener does with an accepted socket before MQTT starts.
#[derive(Clone)]
pub(crate) struct Upgrade {
    protocol: ListenerProtocol,
    tls: Option<TlsAcceptor>,
    client_auth: bool,
}

impl std::fmt::Debug for Upgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgrade")
            .field("protocol", &self.protocol)
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

impl Upgrade {
    /// The upgrade of a configured listener (its TLS files loaded now); `None` for plain
    /// MQTT.
    pub fn for_listener(listener: &ListenerConfig) -> Result<Option<Arc<Self>>, TransportError> {
        let tls = match listener.protocol {
            ListenerProtocol::Mqtt => return Ok(None),
            ListenerProtocol::Ws => None,
            ListenerProtocol::Mqtts | ListenerProtocol::Wss => {
                let (Some(cert), Some(key)) = (&listener.cert_file, &listener.key_file) else {
                    return Err(TransportError::MissingFiles(listener.bind));
                };
                Some(tls::acceptor(
                    cert,
                    key,
                    listener.client_ca_file.as_deref(),
                )?)
            }
        };
        Ok(Some(Arc::new(Self {
            protocol: listener.protocol,
            tls,
            client_auth: listener.client_ca_file.is_some(),
        })))
    }

    /// Runs the TLS and WebSocket handshakes; the caller bounds the time they take.
    pub async fn upgrade(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        max_message: usize,
    ) -> io::Result<ClientStream> {
        let (io, transport, verified): (Box<dyn AsyncStream>, Transport, bool) =
            match (&self.tls, self.protocol) {
                (Some(acceptor), ListenerProtocol::Wss) => {
                    let tls = acceptor.accept(stream).await?;
                    let verified =
                        self.client_auth && tls.get_ref().1.peer_certificates().is_some();
                    let ws = ws::accept(tls, max_message).await?;
                    (Box::new(ws), Transport::Wss, verified)
                }
                (Some(acceptor), _) => {
                    let tls = acceptor.accept(stream).await?;
                    let verified =
                        self.client_auth && tls.get_ref().1.peer_certificates().is_some();
                    (Box::new(tls), Transport::Tls, verified)
                }
                (None, _) => (
                    Box::new(ws::accept(stream, max_message).await?),
                    Transport::Ws,
                    false,
                ),
            };
        tracing::debug!(%peer, transport = transport.name(), "transport ready");
        Ok(ClientStream::Adapted(Box::new(Buffered::new(
            io, transport, verified,
        ))))
    }
}

/// The client's stream once the listener's handshakes (if any) are done, within
/// `connect_timeout`; `None` if they fail (logged).
pub(crate) async fn establish(
    upgrade: Option<Arc<Upgrade>>,
    stream: TcpStream,
    peer: SocketAddr,
    ctx: &BrokerContext,
) -> Option<ClientStream> {
    let Some(upgrade) = upgrade else {
        return Some(ClientStream::Tcp(stream));
    };
    // Boxed: a TLS or WebSocket handshake is large, and a plain connection's task would
    // otherwise reserve its room too.
    let upgraded = tokio::select! {
        upgraded = tokio::time::timeout(
            ctx.limits.connect_timeout,
            Box::pin(upgrade.upgrade(stream, peer, ctx.max_packet_size())),
        ) => upgraded,
        () = ctx.shutdown.cancelled() => return None,
    };
    match upgraded {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            tracing::info!(%peer, %error, protocol = %upgrade.protocol, "handshake failed");
            None
        }
        Err(_) => {
            tracing::info!(%peer, protocol = %upgrade.protocol, "handshake not finished in time");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The readiness calls over an in-memory pipe behave like a socket's.
    #[tokio::test]
    async fn buffered_reads_and_writes_through_readiness() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut stream = ClientStream::Adapted(Box::new(Buffered::new(
            Box::new(near),
            Transport::Ws,
            false,
        )));
        far.write_all(b"hello").await.expect("writes");
        std::future::poll_fn(|cx| stream.poll_read_ready(cx))
            .await
            .expect("readable");
        let mut buf = BytesMut::new();
        assert_eq!(stream.try_read_buf(&mut buf).expect("reads"), 5);
        assert_eq!(&buf[..], b"hello");
        assert_eq!(
            stream
                .try_read_buf(&mut buf)
                .expect_err("nothing more")
                .kind(),
            io::ErrorKind::WouldBlock
        );

        // More than the pipe holds: staged, pushed out as the reader drains it.
        let payload: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        let reader = tokio::spawn(async move {
            let mut received = vec![0u8; 40_000];
            far.read_exact(&mut received).await.expect("reads all");
            received
        });
        let mut sent = 0;
        while sent < payload.len() {
            std::future::poll_fn(|cx| stream.poll_write_ready(cx))
                .await
                .expect("writable");
            match stream.try_write(&payload[sent..]) {
                Ok(written) => sent += written,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => panic!("{error}"),
            }
        }
        stream.flush().await.expect("flushes");
        assert_eq!(reader.await.expect("reader"), payload);
    }

    /// A peer that reads nothing cannot hold a shutdown up for long.
    #[tokio::test]
    async fn shutdown_gives_up_on_a_peer_that_does_not_read() {
        let (near, _far) = tokio::io::duplex(16);
        let mut stream = ClientStream::Adapted(Box::new(Buffered::new(
            Box::new(near),
            Transport::Tls,
            false,
        )));
        let mut sent = 0;
        while sent < 1000 {
            match stream.try_write(&[0u8; 1000][sent..]) {
                Ok(written) => sent += written,
                Err(error) => panic!("{error}"),
            }
        }
        let finished =
            tokio::time::timeout(std::time::Duration::from_secs(20), stream.shutdown()).await;
        assert!(finished.is_ok(), "the shutdown waited for the peer");
    }

    #[tokio::test]
    async fn buffered_reports_end_of_stream() {
        let (near, far) = tokio::io::duplex(64);
        let mut stream = ClientStream::Adapted(Box::new(Buffered::new(
            Box::new(near),
            Transport::Tls,
            true,
        )));
        assert!(stream.client_verified());
        assert_eq!(stream.transport(), Transport::Tls);
        drop(far);
        std::future::poll_fn(|cx| stream.poll_read_ready(cx))
            .await
            .expect("ready at end");
        let mut buf = BytesMut::new();
        assert_eq!(stream.try_read_buf(&mut buf).expect("end"), 0);
    }
}

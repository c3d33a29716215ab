//! Opening the byte streams of a bus: serial ports and TCP connections, wrapped so
//! that stale input never passes for the answer to a new request.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_serial::{SerialPortBuilderExt, SerialStream};

/// Serial line settings of a port.
#[derive(Debug, Clone, PartialEq)]
pub struct SerialSettings {
    pub port: String,
    pub baud: u32,
    pub parity: tokio_serial::Parity,
    pub data_bits: tokio_serial::DataBits,
    pub stop_bits: tokio_serial::StopBits,
}

/// Opens a serial port in non-blocking mode and discards whatever input was pending.
pub fn open_serial(settings: &SerialSettings) -> io::Result<SerialStream> {
    use tokio_serial::SerialPort;
    let port = tokio_serial::new(&settings.port, settings.baud)
        .parity(settings.parity)
        .data_bits(settings.data_bits)
        .stop_bits(settings.stop_bits)
        .open_native_async()
        .map_err(|e| io::Error::new(io::ErrorKind::NotFound, format!("{}: {e}", settings.port)))?;
    // A pty (used in tests and by some USB adapters) may refuse to clear; stale bytes
    // are still discarded before every request by `DiscardStaleInput`.
    let _ = port.clear(tokio_serial::ClearBuffer::All);
    Ok(port)
}

/// Connects to `host:port` within `timeout`, with Nagle off (requests are small and
/// latency-bound).
pub async fn connect_tcp(host: &str, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {host}:{port} timed out after {timeout:?}"),
            )
        })??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Wraps a request/response stream so that bytes already waiting to be read when a
/// new request is written are dropped: on a master/slave bus nothing may arrive
/// unasked, so such bytes are a late answer to a request that timed out, or line
/// noise, and must not be taken for the answer to the next request.
#[derive(Debug)]
pub struct DiscardStaleInput<S> {
    inner: S,
    writing: bool,
    discarded: u64,
    received: InputSinceRequest,
}

/// Counts the bytes received since the last request was written, so that a request
/// that timed out can tell silence from an answer that was garbled (bad CRC, noise).
#[derive(Debug, Clone, Default)]
pub struct InputSinceRequest(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl InputSinceRequest {
    pub fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn add(&self, n: usize) {
        self.0
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    fn reset(&self) {
        self.0.store(0, std::sync::atomic::Ordering::Relaxed);
    }
}

impl<S> DiscardStaleInput<S> {
    pub fn new(inner: S) -> Self {
        DiscardStaleInput {
            inner,
            writing: false,
            discarded: 0,
            received: InputSinceRequest::default(),
        }
    }

    /// How many stale bytes were thrown away so far.
    pub fn discarded(&self) -> u64 {
        self.discarded
    }

    /// A handle on the count of bytes received since the last request.
    pub fn input_since_request(&self) -> InputSinceRequest {
        self.received.clone()
    }
}

impl<S: AsyncRead + Unpin> DiscardStaleInput<S> {
    fn discard_pending_input(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let mut scratch = [0u8; 256];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    self.discarded += buf.filled().len() as u64;
                }
                Poll::Ready(Ok(())) | Poll::Pending => return Ok(()),
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Poll::Ready(Err(e)) => return Err(e),
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for DiscardStaleInput<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.received.add(buf.filled().len() - before);
        polled
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for DiscardStaleInput<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if !self.writing {
            self.discard_pending_input(cx)?;
            self.received.reset();
            self.writing = true;
        }
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        if flushed.is_ready() {
            self.writing = false;
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn stale_bytes_are_dropped_before_a_request() {
        let (near, mut far) = tokio::io::duplex(1024);
        let mut link = DiscardStaleInput::new(near);

        far.write_all(b"late answer").await.unwrap();
        // Wait until the stale bytes are readable on our side before writing.
        far.flush().await.unwrap();
        link.write_all(b"request").await.unwrap();
        link.flush().await.unwrap();

        let mut got = [0u8; 7];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"request");
        far.write_all(b"fresh").await.unwrap();
        let mut answer = [0u8; 5];
        link.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"fresh");
        assert_eq!(link.discarded(), b"late answer".len() as u64);
    }
}

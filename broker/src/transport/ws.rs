//! MQTT over WebSocket (`ws` and `wss` listeners): the handshake with subprotocol `mqtt`
//! (or the older `mqttv3.1`), then MQTT bytes in binary frames, exposed as a byte stream.
//! A text frame ends the connection, as the MQTT specification asks.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// Subprotocols accepted, in the server's order of preference.
pub const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// The outcome of subprotocol negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subprotocol {
    /// The first offered one we speak: named in the answer.
    Chosen(&'static str),
    /// The client offered none: accepted, for clients that do not send one.
    NoneOffered,
    /// The client offered only others: refused.
    Unsupported,
}

pub fn choose_subprotocol<'a>(offered: impl IntoIterator<Item = &'a str>) -> Subprotocol {
    let mut any = false;
    for name in offered {
        let name = name.trim();
        if name.is_empty() {
            continue;
        }
        any = true;
        if let Some(known) = SUBPROTOCOLS.iter().find(|known| **known == name) {
            return Subprotocol::Chosen(known);
        }
    }
    if any {
        Subprotocol::Unsupported
    } else {
        Subprotocol::NoneOffered
    }
}

/// Answers the handshake request: names the chosen subprotocol, or refuses with 400.
/// The error type is the handshake library's.
#[allow(clippy::result_large_err)]
fn negotiate(request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    let offered = request
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','));
    match choose_subprotocol(offered) {
        Subprotocol::Chosen(protocol) => {
            response
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(protocol));
            Ok(response)
        }
        Subprotocol::NoneOffered => Ok(response),
        Subprotocol::Unsupported => {
            let mut refusal =
                ErrorResponse::new(Some("supported subprotocols: mqtt, mqttv3.1".to_owned()));
            *refusal.status_mut() = StatusCode::BAD_REQUEST;
            Err(refusal)
        }
    }
}

/// Runs the server side of the WebSocket handshake over `stream`.
pub async fn accept<S>(stream: S, max_message: usize) -> io::Result<WsIo<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, negotiate, Some(config))
        .await
        .map_err(into_io)?;
    Ok(WsIo {
        ws,
        pending: Bytes::new(),
        closed: false,
    })
}

fn into_io(error: WsError) -> io::Error {
    match error {
        WsError::Io(error) => error,
        WsError::ConnectionClosed | WsError::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

/// A WebSocket as a byte stream: binary frames in, one binary frame per write out.
pub struct WsIo<S> {
    ws: WebSocketStream<S>,
    /// The unread rest of the last binary frame.
    pending: Bytes,
    closed: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if super::read_buffered(&mut this.pending, buf) || this.closed {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.pending = data,
                // Answered by the WebSocket layer itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text frame on an MQTT WebSocket",
                    )))
                }
                Some(Ok(Message::Close(_))) | None => this.closed = true,
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => this.closed = true,
                Some(Err(error)) => return Poll::Ready(Err(into_io(error))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let ws = &mut self.ws;
        ready!(Pin::new(&mut *ws).poll_ready(cx)).map_err(into_io)?;
        Pin::new(&mut *ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(into_io)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(into_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.ws).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(error) => Poll::Ready(Err(into_io(error))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subprotocol_choice() {
        use Subprotocol::{Chosen, NoneOffered, Unsupported};
        let cases: [(&[&str], Subprotocol); 7] = [
            (&["mqtt"], Chosen("mqtt")),
            (&["mqttv3.1"], Chosen("mqttv3.1")),
            (&["mqttv3.1", " mqtt"], Chosen("mqttv3.1")),
            (&["wamp", "mqtt"], Chosen("mqtt")),
            (&[], NoneOffered),
            (&[" "], NoneOffered),
            (&["wamp", "stomp"], Unsupported),
        ];
        for (offered, expected) in cases {
            assert_eq!(
                choose_subprotocol(offered.iter().copied()),
                expected,
                "{offered:?}"
            );
        }
    }
}

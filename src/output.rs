//! Events as JSON lines on stdout, for when no upstream broker is configured.

use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc::Receiver;

use crate::event::Event;

/// One line: `{"device": ..., "event": ..., "d": {...}, "ts": ...}`.
pub fn json_line(event: &Event) -> Vec<u8> {
    let head = serde_json::json!({ "device": event.device_id, "event": event.name() });
    let mut line = serde_json::to_vec(&head).expect("strings always serialize");
    // Splice the payload's members into the head object: `{...}` + `,` + `"d":...}`.
    line.pop();
    line.push(b',');
    line.extend_from_slice(&event.platform_json()[1..]);
    line.push(b'\n');
    line
}

/// Writes every received event until the channel closes, flushing when idle.
pub async fn write_lines(
    mut events: Receiver<Event>,
    out: impl AsyncWrite + Unpin,
) -> std::io::Result<()> {
    let mut out = BufWriter::new(out);
    while let Some(event) = events.recv().await {
        out.write_all(&json_line(&event)).await?;
        if events.is_empty() {
            out.flush().await?;
        }
    }
    out.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Qos;

    #[test]
    fn line_carries_device_event_and_payload() {
        let mut d = serde_json::Map::new();
        d.insert("t".into(), 1.5.into());
        let e = Event::new(
            "b1",
            "status",
            Qos::AtMostOnce,
            d,
            time::OffsetDateTime::UNIX_EPOCH,
        );
        let line = json_line(&e);
        assert_eq!(line.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["device"], "b1");
        assert_eq!(v["event"], "status");
        assert_eq!(v["d"]["t"], 1.5);
        assert_eq!(v["ts"], "1970-01-01T00:00:00.000Z");
    }
}

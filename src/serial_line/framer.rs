//! Splits a serial byte stream into lines, with a bound on line length.

/// Why a line was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("line longer than {max} bytes discarded")]
    TooLong { max: usize },
    #[error("line is not valid UTF-8 ({len} bytes discarded)")]
    NotText { len: usize },
}

/// Accumulates bytes until `\n` (a preceding `\r` is dropped). A line longer than
/// `max_line` is discarded up to its end and reported once, so garbage without line
/// breaks cannot grow the buffer.
#[derive(Debug)]
pub struct LineFramer {
    buf: Vec<u8>,
    max_line: usize,
    overflowed: bool,
}

impl LineFramer {
    pub fn new(max_line: usize) -> Self {
        LineFramer {
            buf: Vec::with_capacity(max_line.min(256)),
            max_line,
            overflowed: false,
        }
    }

    /// Feeds received bytes; calls `on_line` for each complete line, in order.
    pub fn push(&mut self, bytes: &[u8], mut on_line: impl FnMut(Result<&str, LineError>)) {
        for &byte in bytes {
            if byte == b'\n' {
                if self.overflowed {
                    on_line(Err(LineError::TooLong { max: self.max_line }));
                } else {
                    let line = self.buf.strip_suffix(b"\r").unwrap_or(&self.buf);
                    match std::str::from_utf8(line) {
                        Ok("") => {}
                        Ok(text) => on_line(Ok(text)),
                        Err(_) => on_line(Err(LineError::NotText { len: line.len() })),
                    }
                }
                self.buf.clear();
                self.overflowed = false;
            } else if self.overflowed {
                continue;
            } else if self.buf.len() >= self.max_line {
                self.overflowed = true;
                self.buf.clear();
            } else {
                self.buf.push(byte);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(framer: &mut LineFramer, input: &[u8]) -> Vec<Result<String, LineError>> {
        let mut out = Vec::new();
        framer.push(input, |l| out.push(l.map(str::to_owned)));
        out
    }

    #[test]
    fn splits_lines_across_reads() {
        let mut f = LineFramer::new(64);
        assert!(collect(&mut f, b"$GPGGA,1").is_empty());
        assert_eq!(
            collect(&mut f, b"23\r\nnext\n\n"),
            vec![Ok("$GPGGA,123".to_string()), Ok("next".to_string())]
        );
    }

    #[test]
    fn over_long_lines_are_dropped_and_reported_once() {
        let mut f = LineFramer::new(8);
        let out = collect(&mut f, b"0123456789abcdef0123\nok\n");
        assert_eq!(
            out,
            vec![Err(LineError::TooLong { max: 8 }), Ok("ok".to_string())]
        );
        assert!(f.buf.capacity() <= 256);
    }

    #[test]
    fn binary_garbage_is_reported() {
        let mut f = LineFramer::new(64);
        let out = collect(&mut f, b"\xff\xfe\x00\nfine\n");
        assert_eq!(
            out,
            vec![Err(LineError::NotText { len: 3 }), Ok("fine".to_string())]
        );
    }
}

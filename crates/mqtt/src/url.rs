//! Broker addresses written as URLs: `mqtt://HOST[:PORT]` and `mqtts://HOST[:PORT]`, with
//! `tcp://` and `ssl://` accepted as their synonyms (the Paho spelling).

use std::fmt;
use std::str::FromStr;

const HELP: &str = "expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]";

/// Port of plain MQTT when the URL names none.
pub const DEFAULT_PORT: u16 = 1883;
/// Port of MQTT over TLS when the URL names none.
pub const DEFAULT_TLS_PORT: u16 = 8883;

/// A broker address, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    /// Host name or IP address (IPv6 without the brackets).
    pub host: String,
    pub port: u16,
}

/// Why a text is not a broker URL; the message quotes the text and says what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UrlError(String);

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for BrokerUrl {
    type Err = UrlError;

    fn from_str(text: &str) -> Result<Self, UrlError> {
        let fail = |message: String| Err(UrlError(message));
        let Some((scheme, rest)) = text.split_once("://") else {
            return fail(format!("`{text}` is not a broker url, {HELP}"));
        };
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            _ => return fail(format!("unsupported scheme in broker url `{text}`, {HELP}")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '@', '?', '#']) {
            return fail(format!(
                "broker url `{text}` may not have a path, user or query, {HELP}"
            ));
        }
        let (host, port) = match rest.strip_prefix('[') {
            Some(bracketed) => {
                let Some((host, after)) = bracketed.split_once(']') else {
                    return fail(format!("unclosed `[` in broker url `{text}`, {HELP}"));
                };
                let port = match after {
                    "" => None,
                    _ => match after.strip_prefix(':') {
                        Some(port) => Some(port),
                        None => {
                            return fail(format!(
                                "unexpected `{after}` after the host in `{text}`, {HELP}"
                            ))
                        }
                    },
                };
                (host, port)
            }
            None => match rest.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            },
        };
        if host.is_empty() {
            return fail(format!("broker url `{text}` has no host, {HELP}"));
        }
        let port = match port {
            None if tls => DEFAULT_TLS_PORT,
            None => DEFAULT_PORT,
            Some(port) => match port.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => {
                    return fail(format!(
                        "bad port `{port}` in broker url `{text}`, expected 1 to 65535"
                    ))
                }
            },
        };
        Ok(BrokerUrl {
            tls,
            host: host.to_owned(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (String, u16, bool) {
        let url: BrokerUrl = text.parse().unwrap();
        (url.host, url.port, url.tls)
    }

    #[test]
    fn schemes_hosts_and_default_ports() {
        assert_eq!(
            parse("mqtt://127.0.0.1:1884"),
            ("127.0.0.1".into(), 1884, false)
        );
        assert_eq!(
            parse("mqtts://broker.example"),
            ("broker.example".into(), 8883, true)
        );
        assert_eq!(parse("tcp://h"), ("h".into(), 1883, false));
        assert_eq!(parse("SSL://h:9000"), ("h".into(), 9000, true));
        assert_eq!(parse("mqtt://[::1]:1900/"), ("::1".into(), 1900, false));
        assert_eq!(parse("mqtts://[::1]"), ("::1".into(), 8883, true));
        assert_eq!(parse("mqtt://h"), ("h".into(), 1883, false));
    }

    #[test]
    fn display_round_trips() {
        for text in ["mqtt://h:1883", "mqtts://[::1]:8883"] {
            assert_eq!(text.parse::<BrokerUrl>().unwrap().to_string(), text);
        }
        assert_eq!(
            "ssl://h".parse::<BrokerUrl>().unwrap().to_string(),
            "mqtts://h:8883"
        );
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        for (bad, reason) in [
            ("127.0.0.1:1883", "is not a broker url"),
            ("http://h", "unsupported scheme"),
            ("mqtt://h:0", "bad port `0`"),
            ("mqtt://h:x", "bad port `x`"),
            ("mqtt://h:1:2", "bad port `1:2`"),
            ("mqtt://:1883", "has no host"),
            ("mqtt://h/path", "may not have a path"),
            ("mqtt://user@h", "may not have a path, user"),
            ("mqtt://[::1", "unclosed `[`"),
            ("mqtt://[::1]x", "unexpected `x`"),
        ] {
            let error = bad.parse::<BrokerUrl>().unwrap_err().to_string();
            assert!(error.contains(reason), "{bad}: {error}");
            assert!(error.contains(bad), "{bad}: the text is quoted: {error}");
        }
        let error = "http://h".parse::<BrokerUrl>().unwrap_err().to_string();
        assert!(error.contains(HELP), "{error}");
    }
}

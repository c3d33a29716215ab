//! Client identities of the platform mode, read from the MQTT client id:
//! `d:<org>:<type>:<id>` (a device), `a:<org>:<app>` (an application) and `A:<org>:<app>`
//! (a scalable application whose connections share the subscription load), and the
//! platform's fixed values. The gateway names its devices by these rules and the broker
//! enforces them.

use std::fmt;

/// Largest payload the platform accepts.
pub const MAX_PAYLOAD: usize = 131_072;
/// The user name devices authenticate with; the password is their token.
pub const DEVICE_USERNAME: &str = "use-token-auth";

/// Longest device type, device id, application id or organization.
pub const MAX_NAME_LEN: usize = 36;

/// Whether `name` can be a device type, device id, application id or organization:
/// 1 to 36 of `A-Z a-z 0-9 . _ -`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientKind {
    Device {
        device_type: String,
        device_id: String,
    },
    Application {
        app_id: String,
        scalable: bool,
    },
}

/// Who a client id says the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub org: String,
    pub kind: ClientKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the client id is not d:<org>:<type>:<id>, a:<org>:<app> or A:<org>:<app>")]
    UnknownForm,
    #[error("the client id has {found} parts separated by ':', {expected} expected")]
    Parts { expected: usize, found: usize },
    #[error("invalid {what} {value:?} (1 to 36 of A-Z a-z 0-9 . _ -)")]
    InvalidName { what: &'static str, value: String },
}

impl ClientIdentity {
    pub fn parse(client_id: &str) -> Result<Self, IdentityError> {
        let parts: Vec<&str> = client_id.split(':').collect();
        let expected = match parts[0] {
            "d" => 4,
            "a" | "A" => 3,
            _ => return Err(IdentityError::UnknownForm),
        };
        if parts.len() != expected {
            return Err(IdentityError::Parts {
                expected,
                found: parts.len(),
            });
        }
        let name = |what: &'static str, value: &str| {
            if valid_name(value) {
                Ok(value.to_owned())
            } else {
                Err(IdentityError::InvalidName {
                    what,
                    value: value.to_owned(),
                })
            }
        };
        let org = name("organization", parts[1])?;
        let kind = match parts[0] {
            "d" => ClientKind::Device {
                device_type: name("device type", parts[2])?,
                device_id: name("device id", parts[3])?,
            },
            marker => ClientKind::Application {
                app_id: name("application id", parts[2])?,
                scalable: marker == "A",
            },
        };
        Ok(Self { org, kind })
    }

    pub fn is_device(&self) -> bool {
        matches!(self.kind, ClientKind::Device { .. })
    }

    /// The topic of this client's retained status messages.
    pub fn status_topic(&self) -> String {
        match &self.kind {
            ClientKind::Device {
                device_type,
                device_id,
            } => format!("iot-2/type/{device_type}/id/{device_id}/mon"),
            ClientKind::Application { app_id, .. } => format!("iot-2/app/{app_id}/mon"),
        }
    }
}

impl fmt::Display for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ClientKind::Device {
                device_type,
                device_id,
            } => write!(f, "d:{}:{device_type}:{device_id}", self.org),
            ClientKind::Application { app_id, scalable } => {
                let marker = if *scalable { 'A' } else { 'a' };
                write!(f, "{marker}:{}:{app_id}", self.org)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(org: &str, device_type: &str, device_id: &str) -> ClientIdentity {
        ClientIdentity {
            org: org.into(),
            kind: ClientKind::Device {
                device_type: device_type.into(),
                device_id: device_id.into(),
            },
        }
    }

    fn app(org: &str, app_id: &str, scalable: bool) -> ClientIdentity {
        ClientIdentity {
            org: org.into(),
            kind: ClientKind::Application {
                app_id: app_id.into(),
                scalable,
            },
        }
    }

    #[test]
    fn valid_forms() {
        let cases = [
            (
                "d:acme:boiler:boiler-1",
                device("acme", "boiler", "boiler-1"),
            ),
            ("d:acme:a.b_c-D:9", device("acme", "a.b_c-D", "9")),
            ("a:acme:dashboard", app("acme", "dashboard", false)),
            ("A:acme:worker", app("acme", "worker", true)),
        ];
        for (text, expected) in cases {
            let parsed = ClientIdentity::parse(text).expect(text);
            assert_eq!(parsed, expected, "{text}");
            assert_eq!(parsed.to_string(), text, "round trip");
        }
    }

    #[test]
    fn malformed_forms() {
        let long = "x".repeat(37);
        let cases = [
            String::new(),
            "plain-client".into(),
            "D:acme:t:i".into(),
            "d:acme:boiler".into(),
            "d:acme:boiler:1:extra".into(),
            "a:acme".into(),
            "a:acme:app:extra".into(),
            "d::t:i".into(),
            "d:acme:t:".into(),
            "d:acme:t/x:i".into(),
            "d:acme:t:i+".into(),
            "d:acme:t:i#".into(),
            "a:acme:with space".into(),
            format!("d:acme:t:{long}"),
            format!("a:{long}:app"),
        ];
        for text in cases {
            assert!(ClientIdentity::parse(&text).is_err(), "{text:?} accepted");
        }
        assert_eq!(
            ClientIdentity::parse("x:y"),
            Err(IdentityError::UnknownForm)
        );
    }

    #[test]
    fn status_topics() {
        assert_eq!(
            device("o", "t", "d").status_topic(),
            "iot-2/type/t/id/d/mon"
        );
        assert_eq!(app("o", "x", true).status_topic(), "iot-2/app/x/mon");
    }

    #[test]
    fn name_limits() {
        assert!(valid_name(&"a".repeat(36)));
        assert!(!valid_name(&"a".repeat(37)));
        assert!(!valid_name("é"));
        assert!(valid_name("boiler-1.A_b"));
        for bad in ["", "a/b", "a+b", "a#", "a:b", "a b"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}

//! Client ids, user names and topics: the platform scheme (`d:<org>:<type>:<id>`,
//! `use-token-auth`, `iot-2/evt/<event>/fmt/json`) or templates with `{org}`, `{type}`,
//! `{id}` (alias `{device}`), `{event}` and `{command}` for other brokers.

use fieldbridge_mqtt::platform::DEVICE_USERNAME;

use super::UplinkError;

/// How a device's MQTT identity and topics are named.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TopicScheme {
    /// `d:<org>:<type>:<id>`, `use-token-auth`, `iot-2/evt/<event>/fmt/json`,
    /// `iot-2/cmd/<command>/fmt/json`.
    #[default]
    Platform,
    /// Templates for brokers that are not in platform mode.
    Custom {
        /// e.g. `fieldbridge-{type}-{id}`.
        client_id: String,
        /// User name sent with the device token; `use-token-auth` when absent.
        username: Option<String>,
        /// e.g. `plant/{org}/{type}/{id}/evt/{event}`.
        event: String,
        /// e.g. `plant/{org}/{type}/{id}/cmd/{command}`; `{command}` must be a whole
        /// topic level (the subscription puts `+` there).
        command: String,
    },
    /// One Sparkplug B edge node for the gateway (no templates).
    Sparkplug(super::SparkplugSettings),
    /// Home Assistant devices, announced by MQTT discovery (no templates).
    HomeAssistant(super::HomeAssistantSettings),
}

const PLATFORM_CLIENT_ID: &str = "d:{org}:{type}:{id}";
const PLATFORM_EVENT: &str = "iot-2/evt/{event}/fmt/json";
const PLATFORM_COMMAND: &str = "iot-2/cmd/{command}/fmt/json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placeholder {
    Org,
    Type,
    Id,
    Event,
    Command,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Value(Placeholder),
}

/// What a template names; decides which placeholders it needs or may not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ClientId,
    Username,
    Event,
    Command,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::ClientId => "client id",
            Kind::Username => "username",
            Kind::Event => "event topic",
            Kind::Command => "command topic",
        }
    }
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    parts: Vec<Part>,
}

/// The values a template is filled with.
pub(crate) struct TemplateValues<'a> {
    pub org: &'a str,
    pub device_type: &'a str,
    pub device_id: &'a str,
}

impl Template {
    fn parse(text: &str, kind: Kind) -> Result<Self, UplinkError> {
        let invalid = |reason: String| UplinkError::Topic {
            template: text.to_owned(),
            reason: format!("{} template: {reason}", kind.name()),
        };
        if text.is_empty() {
            return Err(invalid("must not be empty".into()));
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .map(|i| open + i)
                .ok_or_else(|| invalid("a '{' is not closed".into()))?;
            let placeholder = match &rest[open + 1..close] {
                "org" => Placeholder::Org,
                "type" => Placeholder::Type,
                "id" | "device" => Placeholder::Id,
                "event" => Placeholder::Event,
                "command" => Placeholder::Command,
                other => {
                    return Err(invalid(format!(
                        "unknown placeholder {{{other}}} (allowed: {{org}}, {{type}}, {{id}} or \
                         {{device}}, {{event}}, {{command}})"
                    )))
                }
            };
            parts.push(Part::Value(placeholder));
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        let template = Template { parts };
        template.check(kind).map_err(invalid)?;
        Ok(template)
    }

    fn check(&self, kind: Kind) -> Result<(), String> {
        let has = |p: Placeholder| self.parts.contains(&Part::Value(p));
        let texts = || {
            self.parts.iter().filter_map(|p| match p {
                Part::Text(t) => Some(t.as_str()),
                Part::Value(_) => None,
            })
        };
        if texts().any(|t| t.contains('}')) {
            return Err("a '}' has no '{'".into());
        }
        match kind {
            Kind::ClientId | Kind::Username => {
                if has(Placeholder::Event) || has(Placeholder::Command) {
                    return Err("{event} and {command} belong in topics only".into());
                }
            }
            Kind::Event | Kind::Command => {
                if let Some(t) = texts().find(|t| t.contains(['+', '#', '\0'])) {
                    return Err(format!("'{t}' contains a wildcard or NUL"));
                }
                if matches!(self.parts.first(), Some(Part::Text(t)) if t.starts_with('$')) {
                    return Err("must not start with '$'".into());
                }
                let (needed, other) = if kind == Kind::Event {
                    (Placeholder::Event, Placeholder::Command)
                } else {
                    (Placeholder::Command, Placeholder::Event)
                };
                if !has(needed) {
                    let name = if kind == Kind::Event {
                        "{event}"
                    } else {
                        "{command}"
                    };
                    return Err(format!("must contain {name}"));
                }
                if has(other) {
                    return Err("must not contain both {event} and {command}".into());
                }
                if kind == Kind::Command && !self.command_is_a_whole_level() {
                    return Err("{command} must be a whole topic level, between '/'s".into());
                }
            }
        }
        Ok(())
    }

    fn command_is_a_whole_level(&self) -> bool {
        self.parts.iter().enumerate().all(|(i, part)| {
            if *part != Part::Value(Placeholder::Command) {
                return true;
            }
            let before_ok = match i.checked_sub(1).map(|j| &self.parts[j]) {
                None => true,
                Some(Part::Text(t)) => t.ends_with('/'),
                Some(Part::Value(_)) => false,
            };
            let after_ok = match self.parts.get(i + 1) {
                None => true,
                Some(Part::Text(t)) => t.starts_with('/'),
                Some(Part::Value(_)) => false,
            };
            before_ok && after_ok
        })
    }

    /// Fills the template; `variable` replaces `{event}` or `{command}`.
    pub(crate) fn render(&self, values: &TemplateValues<'_>, variable: &str) -> String {
        let mut text = String::with_capacity(64);
        for part in &self.parts {
            text.push_str(match part {
                Part::Text(text) => text,
                Part::Value(Placeholder::Org) => values.org,
                Part::Value(Placeholder::Type) => values.device_type,
                Part::Value(Placeholder::Id) => values.device_id,
                Part::Value(Placeholder::Event | Placeholder::Command) => variable,
            });
        }
        text
    }
}

/// The validated templates of a scheme (the command template is checked too, so that
/// a bad configuration is reported at start, and kept for the subscription).
#[derive(Debug, Clone)]
pub(crate) struct Naming {
    pub client_id: Template,
    pub username: Template,
    pub event: Template,
    pub command: Template,
}

impl Naming {
    pub(crate) fn new(scheme: &TopicScheme) -> Result<Self, UplinkError> {
        let (client_id, username, event, command) = match scheme {
            // Sparkplug names its session and topics itself.
            TopicScheme::Platform | TopicScheme::Sparkplug(_) | TopicScheme::HomeAssistant(_) => (
                PLATFORM_CLIENT_ID,
                DEVICE_USERNAME,
                PLATFORM_EVENT,
                PLATFORM_COMMAND,
            ),
            TopicScheme::Custom {
                client_id,
                username,
                event,
                command,
            } => (
                client_id.as_str(),
                username.as_deref().unwrap_or(DEVICE_USERNAME),
                event.as_str(),
                command.as_str(),
            ),
        };
        Ok(Naming {
            client_id: Template::parse(client_id, Kind::ClientId)?,
            username: Template::parse(username, Kind::Username)?,
            event: Template::parse(event, Kind::Event)?,
            command: Template::parse(command, Kind::Command)?,
        })
    }
}

/// The command name in `topic`, when it matches `filter` (a command template rendered
/// with `+` for `{command}`, which is always a whole level).
pub(crate) fn command_in(filter: &str, topic: &str) -> Option<String> {
    let mut name = None;
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        let got = topic_levels.next()?;
        if level == "+" {
            if got.is_empty() {
                return None;
            }
            name = Some(got.to_owned());
        } else if level != got {
            return None;
        }
    }
    if topic_levels.next().is_some() {
        return None;
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_names_come_out_of_topics() {
        let filter = "iot-2/cmd/+/fmt/json";
        assert_eq!(
            command_in(filter, "iot-2/cmd/setpoint/fmt/json").as_deref(),
            Some("setpoint")
        );
        assert_eq!(command_in(filter, "iot-2/cmd/setpoint/fmt/xml"), None);
        assert_eq!(command_in(filter, "iot-2/cmd//fmt/json"), None);
        assert_eq!(command_in(filter, "iot-2/cmd/a/fmt/json/extra"), None);
        assert_eq!(
            command_in("plant/boiler-1/+", "plant/boiler-1/mode").as_deref(),
            Some("mode")
        );
    }

    const VALUES: TemplateValues<'static> = TemplateValues {
        org: "myorg",
        device_type: "boiler",
        device_id: "boiler-1",
    };

    fn custom(client_id: &str, event: &str, command: &str) -> TopicScheme {
        TopicScheme::Custom {
            client_id: client_id.into(),
            username: None,
            event: event.into(),
            command: command.into(),
        }
    }

    #[test]
    fn platform_naming() {
        let naming = Naming::new(&TopicScheme::Platform).unwrap();
        assert_eq!(
            naming.client_id.render(&VALUES, ""),
            "d:myorg:boiler:boiler-1"
        );
        assert_eq!(naming.username.render(&VALUES, ""), "use-token-auth");
        assert_eq!(
            naming.event.render(&VALUES, "status"),
            "iot-2/evt/status/fmt/json"
        );
        let command = Template::parse(PLATFORM_COMMAND, Kind::Command).unwrap();
        assert_eq!(command.render(&VALUES, "+"), "iot-2/cmd/+/fmt/json");
    }

    #[test]
    fn custom_templates_fill_every_placeholder() {
        let scheme = TopicScheme::Custom {
            client_id: "gw-{type}-{device}".into(),
            username: Some("{org}-devices".into()),
            event: "plant/{org}/{type}/{id}/evt/{event}".into(),
            command: "plant/{org}/{id}/cmd/{command}".into(),
        };
        let naming = Naming::new(&scheme).unwrap();
        assert_eq!(naming.client_id.render(&VALUES, ""), "gw-boiler-boiler-1");
        assert_eq!(naming.username.render(&VALUES, ""), "myorg-devices");
        assert_eq!(
            naming.event.render(&VALUES, "status"),
            "plant/myorg/boiler/boiler-1/evt/status"
        );
        let command = Template::parse("plant/{org}/{id}/cmd/{command}", Kind::Command).unwrap();
        assert_eq!(
            command.render(&VALUES, "setpoint"),
            "plant/myorg/boiler-1/cmd/setpoint"
        );
    }

    #[test]
    fn bad_event_templates_are_rejected_with_the_reason() {
        let cases = [
            ("plant/{id}/evt", "must contain {event}"),
            ("plant/{dev}/{event}", "unknown placeholder {dev}"),
            ("plant/{id/{event}", "unknown placeholder"),
            ("plant/{event", "not closed"),
            ("plant/id}/{event}", "has no '{'"),
            ("plant/#/{event}", "wildcard"),
            ("$SYS/{event}", "start with '$'"),
            ("p/{event}/{command}", "both"),
            ("", "empty"),
        ];
        for (template, reason) in cases {
            let err = Naming::new(&custom("c-{id}", template, "c/{command}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(reason), "{template}: {err}");
            assert!(err.contains("event topic template"), "{err}");
        }
    }

    #[test]
    fn the_command_and_client_id_templates_are_checked_too() {
        let err = Naming::new(&custom("c-{id}", "e/{event}", "c/{id}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("command topic template: must contain {command}"),
            "{err}"
        );
        let err = Naming::new(&custom("c-{id}", "e/{event}", "c/cmd-{command}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("whole topic level"), "{err}");
        let err = Naming::new(&custom("c-{event}", "e/{event}", "c/{command}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("client id template"), "{err}");
    }
}

//! Topic names: the platform scheme (`iot-2/evt/<event>/fmt/json`) or templates with
//! `{org}`, `{type}`, `{id}`, `{event}` and `{command}` for other brokers.

use super::UplinkError;

/// How a device's topics are named.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TopicScheme {
    /// `iot-2/evt/<event>/fmt/json` and `iot-2/cmd/<command>/fmt/json`.
    #[default]
    Platform,
    /// Templates for brokers that are not in platform mode, e.g.
    /// `event: "plant/{org}/{type}/{id}/evt/{event}"`.
    Custom { event: String, command: String },
}

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

/// A parsed topic template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicTemplate {
    parts: Vec<Part>,
}

/// The values a template is filled with.
pub(crate) struct TopicValues<'a> {
    pub org: &'a str,
    pub device_type: &'a str,
    pub device_id: &'a str,
}

impl TopicTemplate {
    /// Parses `text`; `variable` is the placeholder this kind of topic must contain
    /// (`{event}` for events, `{command}` for commands).
    fn parse(text: &str, what: &str, variable: Placeholder) -> Result<Self, UplinkError> {
        let invalid = |reason: String| UplinkError::Topic {
            template: text.to_owned(),
            reason: format!("{what} topic template: {reason}"),
        };
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
                "id" => Placeholder::Id,
                "event" => Placeholder::Event,
                "command" => Placeholder::Command,
                other => {
                    return Err(invalid(format!(
                        "unknown placeholder {{{other}}} (allowed: {{org}}, {{type}}, {{id}}, \
                         {{event}}, {{command}})"
                    )))
                }
            };
            parts.push(Part::Value(placeholder));
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        let texts = parts.iter().filter_map(|p| match p {
            Part::Text(t) => Some(t.as_str()),
            Part::Value(_) => None,
        });
        for t in texts {
            if t.contains(['+', '#', '}', '\0']) {
                return Err(invalid(format!(
                    "'{t}' contains a character not allowed in a topic name (+ # }} or NUL)"
                )));
            }
        }
        if !parts.contains(&Part::Value(variable)) {
            let name = if variable == Placeholder::Event {
                "{event}"
            } else {
                "{command}"
            };
            return Err(invalid(format!("must contain {name}")));
        }
        if text.is_empty() || text.starts_with('$') {
            return Err(invalid("must not be empty or start with '$'".into()));
        }
        Ok(TopicTemplate { parts })
    }

    /// Fills the template; `variable` replaces `{event}` or `{command}`.
    pub(crate) fn render(&self, values: &TopicValues<'_>, variable: &str) -> String {
        let mut topic = String::with_capacity(64);
        for part in &self.parts {
            topic.push_str(match part {
                Part::Text(text) => text,
                Part::Value(Placeholder::Org) => values.org,
                Part::Value(Placeholder::Type) => values.device_type,
                Part::Value(Placeholder::Id) => values.device_id,
                Part::Value(Placeholder::Event | Placeholder::Command) => variable,
            });
        }
        topic
    }
}

/// The templates of a scheme, validated (the command template too, so that a bad
/// configuration is reported at start).
#[derive(Debug, Clone)]
pub(crate) struct Topics {
    pub event: TopicTemplate,
}

impl Topics {
    pub(crate) fn new(scheme: &TopicScheme) -> Result<Self, UplinkError> {
        let (event, command) = match scheme {
            TopicScheme::Platform => (PLATFORM_EVENT, PLATFORM_COMMAND),
            TopicScheme::Custom { event, command } => (event.as_str(), command.as_str()),
        };
        TopicTemplate::parse(command, "command", Placeholder::Command)?;
        Ok(Topics {
            event: TopicTemplate::parse(event, "event", Placeholder::Event)?,
        })
    }
}

/// Ids that go into client ids and topics: `[A-Za-z0-9._-]{1,36}`.
pub(crate) fn valid_id(text: &str) -> bool {
    (1..=36).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALUES: TopicValues<'static> = TopicValues {
        org: "myorg",
        device_type: "boiler",
        device_id: "boiler-1",
    };

    #[test]
    fn platform_topics() {
        let topics = Topics::new(&TopicScheme::Platform).unwrap();
        assert_eq!(
            topics.event.render(&VALUES, "status"),
            "iot-2/evt/status/fmt/json"
        );
        let command = TopicTemplate::parse(PLATFORM_COMMAND, "command", Placeholder::Command);
        assert_eq!(
            command.unwrap().render(&VALUES, "+"),
            "iot-2/cmd/+/fmt/json"
        );
    }

    #[test]
    fn custom_templates_fill_every_placeholder() {
        let topics = Topics::new(&TopicScheme::Custom {
            event: "plant/{org}/{type}/{id}/evt/{event}".into(),
            command: "plant/{org}/{id}/cmd/{command}".into(),
        })
        .unwrap();
        assert_eq!(
            topics.event.render(&VALUES, "status"),
            "plant/myorg/boiler/boiler-1/evt/status"
        );
        let command = TopicTemplate::parse(
            "plant/{org}/{id}/cmd/{command}",
            "command",
            Placeholder::Command,
        );
        assert_eq!(
            command.unwrap().render(&VALUES, "setpoint"),
            "plant/myorg/boiler-1/cmd/setpoint"
        );
    }

    #[test]
    fn bad_templates_are_rejected_with_the_reason() {
        let cases = [
            ("plant/{id}/evt", "must contain {event}"),
            ("plant/{device}/{event}", "unknown placeholder {device}"),
            ("plant/{id/{event}", "unknown placeholder"),
            ("plant/{event", "not closed"),
            ("plant/#/{event}", "not allowed"),
            ("$SYS/{event}", "start with '$'"),
        ];
        for (template, reason) in cases {
            let err = Topics::new(&TopicScheme::Custom {
                event: template.into(),
                command: "c/{command}".into(),
            })
            .unwrap_err()
            .to_string();
            assert!(err.contains(reason), "{template}: {err}");
            assert!(err.contains("event topic template"), "{err}");
        }
    }

    #[test]
    fn the_command_template_is_checked_too() {
        let err = Topics::new(&TopicScheme::Custom {
            event: "e/{event}".into(),
            command: "c/{id}".into(),
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("command topic template: must contain {command}"),
            "{err}"
        );
    }

    #[test]
    fn ids() {
        assert!(valid_id("boiler-1.A_b"));
        assert!(!valid_id(""));
        assert!(!valid_id("a/b"));
        assert!(!valid_id("a+b"));
        assert!(!valid_id(&"x".repeat(37)));
    }
}

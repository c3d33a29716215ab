//! Access control lists in Mosquitto's `acl_file` syntax:
//!
//! ```text
//! # rules before any `user` line apply to anonymous clients
//! topic read public/#
//! user alice
//! topic readwrite sensors/#
//! topic deny sensors/secret
//! pattern write devices/%c/status      # every client; %c = client id, %u = user name
//! ```
//!
//! The access word is `read`, `write`, `readwrite` (the default when left out) or `deny`.
//! A matching `deny` rule wins over any other rule; otherwise access needs a matching rule
//! that grants it. With an ACL file, what no rule grants is refused.

use std::collections::HashMap;
use std::path::Path;

use fieldbridge_mqtt::codec::valid_topic_filter;
use fieldbridge_mqtt::topic::{covers, matches};

#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("cannot read ACL file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Syntax {
        path: String,
        line: usize,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Access {
    fn grants(self, wanted: Wanted) -> bool {
        matches!(
            (self, wanted),
            (Access::ReadWrite, _) | (Access::Read, Wanted::Read) | (Access::Write, Wanted::Write)
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    Read,
    Write,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    access: Access,
    filter: String,
}

/// Who asks: the authenticated (or claimed) user name and the client id.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    pub username: Option<&'a str>,
    pub client_id: &'a str,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Acl {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

impl Acl {
    pub fn load(path: &Path) -> Result<Self, AclError> {
        let text = std::fs::read_to_string(path).map_err(|source| AclError::Read {
            path: path.display().to_string(),
            error: source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses ACL text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, AclError> {
        let mut acl = Acl::default();
        let mut current_user: Option<String> = None;
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let syntax = |message: String| AclError::Syntax {
                path: origin.to_owned(),
                line: index + 1,
                message,
            };
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(syntax("`user` needs a user name".into()));
                    }
                    current_user = Some(rest.to_owned());
                    acl.users.entry(rest.to_owned()).or_default();
                }
                "topic" | "pattern" => {
                    let rule = parse_rule(rest).map_err(syntax)?;
                    if keyword == "pattern" {
                        acl.patterns.push(rule);
                    } else if let Some(user) = &current_user {
                        acl.users.entry(user.clone()).or_default().push(rule);
                    } else {
                        acl.anonymous.push(rule);
                    }
                }
                other => {
                    return Err(syntax(format!(
                        "unknown keyword `{other}` (expected user, topic or pattern)"
                    )))
                }
            }
        }
        Ok(acl)
    }

    /// May this client publish to `topic`?
    pub fn can_publish(&self, who: Identity<'_>, topic: &str) -> bool {
        self.decide(who, Wanted::Write, |filter| matches(filter, topic))
    }

    /// May this client receive a message published to `topic`?
    pub fn can_read(&self, who: Identity<'_>, topic: &str) -> bool {
        self.decide(who, Wanted::Read, |filter| matches(filter, topic))
    }

    /// May this client subscribe to `filter`? Only if the rules grant reading every topic
    /// the filter can match (a `deny` rule inside it still filters messages on delivery).
    pub fn can_subscribe(&self, who: Identity<'_>, filter: &str) -> bool {
        self.decide(who, Wanted::Read, |rule| covers(rule, filter))
    }

    fn decide(&self, who: Identity<'_>, wanted: Wanted, applies: impl Fn(&str) -> bool) -> bool {
        let own = match who.username {
            Some(user) => self.users.get(user).map(Vec::as_slice).unwrap_or_default(),
            None => &self.anonymous,
        };
        let mut granted = false;
        for rule in own {
            if applies(&rule.filter) {
                if rule.access == Access::Deny {
                    return false;
                }
                granted |= rule.access.grants(wanted);
            }
        }
        for rule in &self.patterns {
            let Some(filter) = substitute(&rule.filter, who) else {
                continue;
            };
            if applies(&filter) {
                if rule.access == Access::Deny {
                    return false;
                }
                granted |= rule.access.grants(wanted);
            }
        }
        granted
    }
}

fn parse_rule(rest: &str) -> Result<Rule, String> {
    let (first, after) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let (access, filter) = match first {
        "read" => (Access::Read, after.trim()),
        "write" => (Access::Write, after.trim()),
        "readwrite" => (Access::ReadWrite, after.trim()),
        "deny" => (Access::Deny, after.trim()),
        _ => (Access::ReadWrite, rest),
    };
    if filter.is_empty() {
        return Err("missing topic".into());
    }
    // %c and %u stand for whole values; the filter must be valid with them in place.
    if !valid_topic_filter(&filter.replace("%c", "c").replace("%u", "u")) {
        return Err(format!("invalid topic filter {filter:?}"));
    }
    Ok(Rule {
        access,
        filter: filter.to_owned(),
    })
}

/// A pattern with %c and %u replaced; `None` when it names a user the client does not have,
/// or when a value could widen the rule (a wildcard or level separator in it).
fn substitute(pattern: &str, who: Identity<'_>) -> Option<String> {
    let unsafe_value = |value: &str| value.contains(['+', '#', '/']);
    let mut filter = pattern.to_owned();
    if filter.contains("%c") {
        if unsafe_value(who.client_id) || who.client_id.is_empty() {
            return None;
        }
        filter = filter.replace("%c", who.client_id);
    }
    if filter.contains("%u") {
        let user = who.username?;
        if unsafe_value(user) || user.is_empty() {
            return None;
        }
        filter = filter.replace("%u", user);
    }
    Some(filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACL: &str = r#"
# anonymous clients
topic read public/#

user alice
topic readwrite sensors/#
topic deny sensors/secret
topic write commands/+

user bob
topic sensors/temperature

pattern readwrite devices/%c/#
pattern read users/%u/inbox
"#;

    fn who<'a>(username: Option<&'a str>, client_id: &'a str) -> Identity<'a> {
        Identity {
            username,
            client_id,
        }
    }

    #[test]
    fn users_anonymous_and_deny() {
        let acl = Acl::parse(ACL, "acl").expect("parses");
        let alice = who(Some("alice"), "a1");
        assert!(acl.can_publish(alice, "sensors/x"));
        assert!(acl.can_read(alice, "sensors/x"));
        assert!(!acl.can_read(alice, "sensors/secret"));
        assert!(!acl.can_publish(alice, "sensors/secret"));
        assert!(acl.can_publish(alice, "commands/reboot"));
        assert!(!acl.can_read(alice, "commands/reboot"));
        assert!(acl.can_subscribe(alice, "sensors/#"));
        assert!(acl.can_subscribe(alice, "sensors/+/x"));
        assert!(!acl.can_subscribe(alice, "#"));
        assert!(!acl.can_subscribe(alice, "sensors/secret"));
        assert!(
            !acl.can_subscribe(alice, "public/#"),
            "anonymous rules are not alice's"
        );

        let bob = who(Some("bob"), "b1");
        assert!(
            acl.can_publish(bob, "sensors/temperature"),
            "no access word = readwrite"
        );
        assert!(acl.can_read(bob, "sensors/temperature"));
        assert!(!acl.can_publish(bob, "sensors/x"));

        let anonymous = who(None, "anon");
        assert!(acl.can_subscribe(anonymous, "public/#"));
        assert!(!acl.can_publish(anonymous, "public/x"));
        assert!(!acl.can_read(anonymous, "sensors/x"));

        let stranger = who(Some("mallory"), "m1");
        assert!(
            !acl.can_read(stranger, "public/x"),
            "unknown users get no anonymous rules"
        );
    }

    #[test]
    fn patterns() {
        let acl = Acl::parse(ACL, "acl").expect("parses");
        let dev = who(Some("bob"), "dev7");
        assert!(acl.can_publish(dev, "devices/dev7/status"));
        assert!(!acl.can_publish(dev, "devices/dev8/status"));
        assert!(acl.can_subscribe(dev, "devices/dev7/#"));
        assert!(acl.can_read(dev, "users/bob/inbox"));
        assert!(!acl.can_read(dev, "users/alice/inbox"));
        assert!(!acl.can_read(who(None, "x"), "users/%u/inbox"));
        let sneaky = who(Some("+"), "#");
        assert!(!acl.can_read(sneaky, "users/anyone/inbox"));
        assert!(!acl.can_publish(sneaky, "devices/anything/x"));
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let error = Acl::parse("user a\ntopic read a/#/b\n", "acl.conf").expect_err("bad filter");
        assert_eq!(
            error.to_string(),
            "acl.conf:2: invalid topic filter \"a/#/b\""
        );
        let error = Acl::parse("\nowner x\n", "acl.conf").expect_err("bad keyword");
        assert!(error.to_string().starts_with("acl.conf:2:"), "{error}");
        assert!(Acl::parse("topic read\n", "acl").is_err());
        assert!(Acl::parse("user\n", "acl").is_err());
    }
}

//! Topic name and topic filter rules of MQTT 3.1.1 (section 4.7).

use super::wire::MAX_FIELD_LENGTH;

/// A topic a message can be published to: non-empty, at most 65535 bytes, no wildcard
/// (`+`, `#`) and no U+0000.
pub fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= MAX_FIELD_LENGTH && !topic.contains(['+', '#', '\0'])
}

/// A topic filter a client can subscribe to: non-empty, at most 65535 bytes, no U+0000,
/// `+` only as a whole level, `#` only as the whole last level.
pub fn valid_topic_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > MAX_FIELD_LENGTH || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        let valid = match level {
            "+" => true,
            "#" => is_last,
            _ => !level.contains(['+', '#']),
        };
        if !valid {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        for good in ["a", "a/b", "/", "a//b", "$SYS/broker/uptime", "é/ü", " "] {
            assert!(valid_topic_name(good), "{good:?} should be valid");
        }
        for bad in ["", "a/+", "a/#", "#", "+", "a+b", "a\0b"] {
            assert!(!valid_topic_name(bad), "{bad:?} should be invalid");
        }
        assert!(valid_topic_name(&"x".repeat(65_535)));
        assert!(!valid_topic_name(&"x".repeat(65_536)));
    }

    #[test]
    fn topic_filters() {
        for good in [
            "#",
            "+",
            "a/#",
            "a/+",
            "+/+",
            "+/#",
            "/#",
            "a/+/c",
            "/",
            "//",
            "a//#",
            "$SYS/#",
            "sport/tennis/player1/#",
        ] {
            assert!(valid_topic_filter(good), "{good:?} should be valid");
        }
        for bad in [
            "", "a#", "a/#/b", "#/a", "a/b#", "a+", "a/+b", "+a/b", "##", "a/++", "a\0",
        ] {
            assert!(!valid_topic_filter(bad), "{bad:?} should be invalid");
        }
        assert!(!valid_topic_filter(&"x".repeat(65_536)));
    }
}

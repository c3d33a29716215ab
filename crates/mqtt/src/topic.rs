//! Topic rules of MQTT (3.1.1 section 4.7): which topic names and filters are valid, and
//! which topics a filter matches.
//!
//! The matching functions assume valid filters and topics (the codec checks them). A filter
//! whose first level is a wildcard does not match topics starting with `$`.

use crate::codec::MAX_FIELD_LENGTH;

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

/// A shared subscription's group and filter: `Some(("g", "a/#"))` for `$share/g/a/#`.
/// `None` for an ordinary filter, and for one that starts with `$share/` but has no valid
/// group name (non-empty, without `+` or `#`) or no filter after it: those are refused.
pub fn shared_subscription(filter: &str) -> Option<(&str, &str)> {
    let (group, inner) = filter.strip_prefix("$share/")?.split_once('/')?;
    let valid = !group.is_empty() && !group.contains(['+', '#']) && !inner.is_empty();
    valid.then_some((group, inner))
}

/// Whether a filter names a shared subscription (`$share/...`), well-formed or not.
pub fn is_shared(filter: &str) -> bool {
    filter.starts_with("$share/")
}

/// Number of levels of a topic name or filter: `a/b` has 2, `/` has 2 (both empty),
/// `a/#` has 2.
pub fn level_count(topic: &str) -> usize {
    topic.bytes().filter(|&byte| byte == b'/').count() + 1
}

/// Splits off the first level: `("a", Some("b/c"))` for `"a/b/c"`, `("c", None)` for `"c"`.
pub fn split_level(rest: &str) -> (&str, Option<&str>) {
    match rest.split_once('/') {
        Some((level, rest)) => (level, Some(rest)),
        None => (rest, None),
    }
}

/// Whether `topic` (a topic name) matches `filter`.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every topic matched by filter `inner` is also matched by filter `outer`
/// (an ACL rule `outer` allows a subscription to `inner`).
pub fn covers(outer: &str, inner: &str) -> bool {
    let mut outer_levels = outer.split('/');
    let mut inner_levels = inner.split('/');
    let mut first = true;
    loop {
        let (o, i) = (outer_levels.next(), inner_levels.next());
        // A leading wildcard in `outer` does not reach `$` topics, which `inner` names.
        let dollar = first && i.is_some_and(|i| i.starts_with('$'));
        first = false;
        match (o, i) {
            (Some("#"), _) => return !dollar,
            (Some("+"), Some(i)) if i != "#" && !dollar => {}
            (Some(o), Some(i)) if o == i => {}
            (None, None) => return true,
            _ => return false,
        }
    }
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

    #[test]
    fn levels() {
        for (topic, levels) in [("a", 1), ("a/b", 2), ("/", 2), ("a//b/", 4), ("a/+/#", 3)] {
            assert_eq!(level_count(topic), levels, "{topic}");
        }
        assert_eq!(level_count(&vec!["x"; 10_000].join("/")), 10_000);
    }

    #[test]
    fn matching() {
        let cases = [
            ("a/b/c", "a/b/c", true),
            ("a/+/c", "a/b/c", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a/b/c", true),
            ("a/#", "a", true),
            ("#", "a/b", true),
            ("+", "a", true),
            ("+", "a/b", false),
            ("+/+", "/a", true),
            ("/+", "/a", true),
            ("a/+/#", "a/b", true),
            ("a//c", "a//c", true),
            ("a/+/c", "a//c", true),
            ("#", "$SYS/broker/uptime", false),
            ("+/broker/uptime", "$SYS/broker/uptime", false),
            ("$SYS/#", "$SYS/broker/uptime", true),
            ("$SYS/+/uptime", "$SYS/broker/uptime", true),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
        ];
        for (filter, topic, expected) in cases {
            assert_eq!(matches(filter, topic), expected, "{filter} vs {topic}");
        }
    }

    #[test]
    fn coverage() {
        let cases = [
            ("#", "a/b", true),
            ("#", "#", true),
            ("#", "$SYS/#", false),
            ("$SYS/#", "$SYS/broker/+", true),
            ("a/#", "a", true),
            ("a/#", "a/+/c", true),
            ("a/#", "b/#", false),
            ("a/+", "a/b", true),
            ("a/+", "a/+", true),
            ("a/+", "a/#", false),
            ("a/+", "a/b/c", false),
            ("a/b", "a/+", false),
            ("a/b", "a/b", true),
            ("+/x", "$SYS/x", false),
            ("+", "+", true),
            ("a/b/#", "a/#", false),
        ];
        for (outer, inner, expected) in cases {
            assert_eq!(covers(outer, inner), expected, "{outer} covers {inner}");
        }
    }
}

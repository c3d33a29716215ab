//! Retained messages: the last retained message of each topic, by topic level, so that a
//! wildcard subscription finds its retained messages without scanning all of them.

use std::collections::HashMap;
use std::sync::Arc;

use crate::message::Message;
use fieldbridge_mqtt::topic::split_level;

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    message: Option<Arc<Message>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.message.is_none()
    }
}

/// What [`RetainedStore::set`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainOutcome {
    Stored,
    Replaced,
    Cleared,
    /// An empty payload for a topic that had no retained message.
    NothingToClear,
    /// A new topic while the store holds its maximum number of messages.
    Full,
}

#[derive(Debug)]
pub struct RetainedStore {
    root: Node,
    count: usize,
    max_messages: usize,
}

impl RetainedStore {
    pub fn new(max_messages: usize) -> Self {
        Self {
            root: Node::default(),
            count: 0,
            max_messages,
        }
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Stores `message` as the retained message of its topic, or clears the topic's retained
    /// message when the payload is empty. The message is kept as given: callers store
    /// [`Message::detached`] copies.
    pub fn set(&mut self, message: Arc<Message>) -> RetainOutcome {
        if message.payload.is_empty() {
            return if Self::clear_at(&mut self.root, Some(&message.topic)) {
                self.count -= 1;
                RetainOutcome::Cleared
            } else {
                RetainOutcome::NothingToClear
            };
        }
        if self.count >= self.max_messages && self.get(&message.topic).is_none() {
            return RetainOutcome::Full;
        }
        let mut node = &mut self.root;
        let mut rest = Some(&*message.topic);
        while let Some(levels) = rest {
            let (level, next) = split_level(levels);
            node = node.children.entry(level.into()).or_default();
            rest = next;
        }
        if node.message.replace(message).is_some() {
            RetainOutcome::Replaced
        } else {
            self.count += 1;
            RetainOutcome::Stored
        }
    }

    pub fn get(&self, topic: &str) -> Option<&Arc<Message>> {
        let mut node = &self.root;
        let mut rest = Some(topic);
        while let Some(levels) = rest {
            let (level, next) = split_level(levels);
            node = node.children.get(level)?;
            rest = next;
        }
        node.message.as_ref()
    }

    fn clear_at(node: &mut Node, rest: Option<&str>) -> bool {
        let Some(levels) = rest else {
            return node.message.take().is_some();
        };
        let (level, next) = split_level(levels);
        let Some(child) = node.children.get_mut(level) else {
            return false;
        };
        let cleared = Self::clear_at(child, next);
        if child.is_empty() {
            node.children.remove(level);
        }
        cleared
    }

    /// Every retained message whose topic matches `filter`, appended to `out`.
    pub fn matching(&self, filter: &str, out: &mut Vec<Arc<Message>>) {
        Self::collect(&self.root, Some(filter), true, out);
    }

    /// Every retained message, for listings and tests.
    pub fn all(&self, out: &mut Vec<Arc<Message>>) {
        Self::descendants(&self.root, true, out);
    }

    fn collect(node: &Node, rest: Option<&str>, first: bool, out: &mut Vec<Arc<Message>>) {
        let Some(levels) = rest else {
            out.extend(node.message.iter().cloned());
            return;
        };
        let (level, next) = split_level(levels);
        match level {
            "#" => {
                // `a/#` also matches `a` itself.
                if !first {
                    out.extend(node.message.iter().cloned());
                }
                Self::descendants(node, first, out);
            }
            "+" => {
                for (name, child) in &node.children {
                    if !(first && name.starts_with('$')) {
                        Self::collect(child, next, false, out);
                    }
                }
            }
            _ => {
                if let Some(child) = node.children.get(level) {
                    Self::collect(child, next, false, out);
                }
            }
        }
    }

    fn descendants(node: &Node, first: bool, out: &mut Vec<Arc<Message>>) {
        for (name, child) in &node.children {
            if first && name.starts_with('$') {
                continue;
            }
            out.extend(child.message.iter().cloned());
            Self::descendants(child, false, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldbridge_mqtt::codec::QoS;

    fn message(topic: &str, payload: &'static str) -> Arc<Message> {
        Arc::new(Message::new(topic, payload, QoS::AtMostOnce, true))
    }

    fn topics(store: &RetainedStore, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        store.matching(filter, &mut out);
        let mut topics: Vec<String> = out.iter().map(|m| m.topic.to_string()).collect();
        topics.sort();
        topics
    }

    #[test]
    fn set_replace_clear() {
        let mut store = RetainedStore::new(10);
        assert_eq!(store.set(message("a/b", "1")), RetainOutcome::Stored);
        assert_eq!(store.set(message("a/b", "2")), RetainOutcome::Replaced);
        assert_eq!(
            store.get("a/b").map(|m| m.payload.clone()),
            Some("2".into())
        );
        assert_eq!(store.len(), 1);
        assert_eq!(store.set(message("a/b", "")), RetainOutcome::Cleared);
        assert_eq!(store.set(message("a/b", "")), RetainOutcome::NothingToClear);
        assert!(store.is_empty());
        assert!(store.root.is_empty(), "cleared branches are pruned");
    }

    #[test]
    fn wildcard_lookup() {
        let mut store = RetainedStore::new(10);
        for topic in ["a", "a/b", "a/b/c", "a/x", "b/b", "$SYS/uptime", "/lead"] {
            store.set(message(topic, "x"));
        }
        assert_eq!(topics(&store, "a/#"), ["a", "a/b", "a/b/c", "a/x"]);
        assert_eq!(topics(&store, "a/+"), ["a/b", "a/x"]);
        assert_eq!(topics(&store, "+/b"), ["a/b", "b/b"]);
        assert_eq!(
            topics(&store, "#"),
            ["/lead", "a", "a/b", "a/b/c", "a/x", "b/b"]
        );
        assert_eq!(topics(&store, "+"), ["a"]);
        assert_eq!(topics(&store, "+/+"), ["/lead", "a/b", "a/x", "b/b"]);
        assert_eq!(topics(&store, "$SYS/#"), ["$SYS/uptime"]);
        assert_eq!(topics(&store, "a/b"), ["a/b"]);
        assert_eq!(topics(&store, "nothing/#"), Vec::<String>::new());
    }

    #[test]
    fn bounded() {
        let mut store = RetainedStore::new(2);
        store.set(message("a", "1"));
        store.set(message("b", "1"));
        assert_eq!(store.set(message("c", "1")), RetainOutcome::Full);
        assert_eq!(store.set(message("a", "2")), RetainOutcome::Replaced);
        assert_eq!(store.len(), 2);
    }
}

//! Retained messages: the last retained message of each topic, by topic level, so that a
//! wildcard subscription finds its retained messages without scanning all of them.
//!
//! Topics can have thousands of levels, so no walk over the store recurses.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use fieldbridge_service::LogThrottle;

use crate::message::Message;
use fieldbridge_mqtt::topic::split_level;

/// Least time between two log lines about retained messages not stored.
const FULL_WARNING_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    message: Option<Arc<Message>>,
}

impl Node {
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.message.is_none()
    }
}

impl Drop for Node {
    /// Takes the branches apart one node at a time: the generated drop would recurse once
    /// per level.
    fn drop(&mut self) {
        if self.children.is_empty() {
            return;
        }
        let mut pending: Vec<Node> = self.children.drain().map(|(_, child)| child).collect();
        while let Some(mut node) = pending.pop() {
            pending.extend(node.children.drain().map(|(_, child)| child));
        }
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
    /// Not stored: a new topic while the store holds its maximum number of messages, or
    /// more bytes than the store may hold. The topic keeps what it had.
    Full,
}

pub struct RetainedStore {
    root: Node,
    count: usize,
    /// Topic and payload bytes of the messages held.
    bytes: usize,
    max_messages: usize,
    max_bytes: usize,
    /// Messages not stored because the store was full.
    refused: u64,
    full_warnings: LogThrottle,
}

impl fmt::Debug for RetainedStore {
    /// The counts only: printing the nodes would recurse as deep as the deepest topic.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetainedStore")
            .field("count", &self.count)
            .field("bytes", &self.bytes)
            .field("max_messages", &self.max_messages)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl RetainedStore {
    /// A store of at most `max_messages` messages and `max_bytes` bytes of topic and
    /// payload.
    pub fn new(max_messages: usize, max_bytes: usize) -> Self {
        Self {
            root: Node::default(),
            count: 0,
            bytes: 0,
            max_messages,
            max_bytes,
            refused: 0,
            full_warnings: LogThrottle::new(FULL_WARNING_INTERVAL),
        }
    }

    pub fn len(&self) -> usize {
        self.count
    }

    /// Topic and payload bytes of the messages held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages not stored because the store was full, since it was made.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Stores `message` as the retained message of its topic, or clears the topic's retained
    /// message when the payload is empty. The message is kept as given: callers store
    /// [`Message::detached`] copies.
    pub fn set(&mut self, message: Arc<Message>) -> RetainOutcome {
        if message.payload.is_empty() {
            return match self.clear(&message.topic) {
                Some(freed) => {
                    self.count -= 1;
                    self.bytes -= freed;
                    RetainOutcome::Cleared
                }
                None => RetainOutcome::NothingToClear,
            };
        }
        let previous = self.get(&message.topic).map(|old| old.size());
        let bytes = self.bytes - previous.unwrap_or(0) + message.size();
        if (previous.is_none() && self.count >= self.max_messages) || bytes > self.max_bytes {
            self.refuse(&message);
            return RetainOutcome::Full;
        }
        self.bytes = bytes;
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

    fn refuse(&mut self, message: &Message) {
        self.refused += 1;
        if let Some(held_back) = self.full_warnings.admit() {
            tracing::warn!(
                topic = %message.topic,
                size = message.size(),
                retained = self.count,
                retained_bytes = self.bytes,
                max_retained_messages = self.max_messages,
                max_retained_bytes = self.max_bytes,
                held_back,
                "retained store full: message not retained (next warning in 10 s at the earliest)"
            );
        }
    }

    /// Removes the retained message of `topic`, pruning the branch it leaves empty; the
    /// bytes it held, if there was one.
    fn clear(&mut self, topic: &str) -> Option<usize> {
        // First walk: find the message, and the deepest node on its path that keeps
        // something else (the root at least); everything below it goes as one branch.
        let mut node = &self.root;
        let mut rest = Some(topic);
        let mut depth = 0;
        let mut keep_depth = 0;
        while let Some(levels) = rest {
            let (level, next) = split_level(levels);
            let child = node.children.get(level)?;
            if node.message.is_some() || node.children.len() > 1 {
                keep_depth = depth;
            }
            node = child;
            depth += 1;
            rest = next;
        }
        let freed = node.message.as_ref()?.size();
        if !node.children.is_empty() {
            keep_depth = depth;
        }
        // Second walk, down to the node that stays.
        let mut node = &mut self.root;
        let mut rest = Some(topic);
        for _ in 0..keep_depth {
            let Some(levels) = rest else { break };
            let (level, next) = split_level(levels);
            node = node
                .children
                .get_mut(level)
                .expect("the first walk found this path");
            rest = next;
        }
        match rest.filter(|_| keep_depth < depth) {
            Some(levels) => {
                node.children.remove(split_level(levels).0);
            }
            None => node.message = None,
        }
        Some(freed)
    }

    /// Every retained message whose topic matches `filter`, appended to `out`.
    pub fn matching(&self, filter: &str, out: &mut Vec<Arc<Message>>) {
        // Nodes still to visit, with the filter levels left and whether they are the root
        // (where wildcards do not match `$` topics).
        let mut pending = vec![(&self.root, Some(filter), true)];
        while let Some((node, rest, first)) = pending.pop() {
            let Some(levels) = rest else {
                out.extend(node.message.iter().cloned());
                continue;
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
                            pending.push((child, next, false));
                        }
                    }
                }
                _ => {
                    if let Some(child) = node.children.get(level) {
                        pending.push((child, next, false));
                    }
                }
            }
        }
    }

    /// Every retained message, for listings and tests.
    pub fn all(&self, out: &mut Vec<Arc<Message>>) {
        Self::descendants(&self.root, true, out);
    }

    /// The messages below `node`; `first`: `node` is the root, whose `$` topics are left out.
    fn descendants(node: &Node, first: bool, out: &mut Vec<Arc<Message>>) {
        let mut pending: Vec<&Node> = node
            .children
            .iter()
            .filter(|(name, _)| !(first && name.starts_with('$')))
            .map(|(_, child)| child)
            .collect();
        while let Some(node) = pending.pop() {
            out.extend(node.message.iter().cloned());
            pending.extend(node.children.values());
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
        let mut store = RetainedStore::new(10, usize::MAX);
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
        let mut store = RetainedStore::new(10, usize::MAX);
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
    fn clearing_keeps_what_shares_the_path() {
        let mut store = RetainedStore::new(10, usize::MAX);
        for topic in ["a", "a/b/c/d", "a/b/c/e", "a/b", "a/x/c/d"] {
            store.set(message(topic, "x"));
        }
        assert_eq!(
            store.set(message("a/b/c", "")),
            RetainOutcome::NothingToClear
        );
        assert_eq!(store.set(message("a/b/c/d", "")), RetainOutcome::Cleared);
        assert_eq!(topics(&store, "a/#"), ["a", "a/b", "a/b/c/e", "a/x/c/d"]);
        assert_eq!(store.set(message("a/b", "")), RetainOutcome::Cleared);
        assert_eq!(topics(&store, "a/#"), ["a", "a/b/c/e", "a/x/c/d"]);
        assert_eq!(store.set(message("a", "")), RetainOutcome::Cleared);
        assert_eq!(store.set(message("a/b/c/e", "")), RetainOutcome::Cleared);
        assert_eq!(topics(&store, "#"), ["a/x/c/d"]);
        assert_eq!(store.set(message("a/x/c/d", "")), RetainOutcome::Cleared);
        assert!(store.is_empty());
        assert!(store.root.is_empty());
    }

    #[test]
    fn deep_topics_on_a_small_stack() {
        // A walk recursing once per level would overflow this stack.
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                const LEVELS: usize = 50_000;
                let topic = vec!["l"; LEVELS].join("/");
                let mut store = RetainedStore::new(10, usize::MAX);
                assert_eq!(store.set(message(&topic, "deep")), RetainOutcome::Stored);
                store.set(message("l/short", "short"));
                let all_plus = vec!["+"; LEVELS].join("/");
                let under = format!("{}/#", vec!["l"; LEVELS / 2].join("/"));
                for filter in [topic.as_str(), &all_plus, &under] {
                    let mut out = Vec::new();
                    store.matching(filter, &mut out);
                    assert_eq!(out.len(), 1, "one match");
                    assert_eq!(out[0].topic.len(), topic.len());
                }
                assert_eq!(topics(&store, "#").len(), 2);
                let mut all = Vec::new();
                store.all(&mut all);
                assert_eq!(all.len(), 2);
                assert_eq!(store.set(message(&topic, "")), RetainOutcome::Cleared);
                assert_eq!(topics(&store, "#"), ["l/short"]);
                assert_eq!(store.set(message("l/short", "")), RetainOutcome::Cleared);
                assert!(store.root.is_empty(), "deep branches are pruned");
                // Dropped with a deep branch still in it.
                store.set(message(&topic, "deep"));
                drop(store);
            })
            .expect("thread starts")
            .join()
            .expect("no stack overflow");
    }

    #[test]
    fn bounded() {
        let mut store = RetainedStore::new(2, usize::MAX);
        store.set(message("a", "1"));
        store.set(message("b", "1"));
        assert_eq!(store.set(message("c", "1")), RetainOutcome::Full);
        assert_eq!(store.set(message("a", "2")), RetainOutcome::Replaced);
        assert_eq!(store.len(), 2);
        assert_eq!(store.refused(), 1);
    }

    #[test]
    fn bounded_in_bytes() {
        // Topic and payload count: "a/1" + "12345" is 8 bytes.
        let mut store = RetainedStore::new(100, 20);
        assert_eq!(store.set(message("a/1", "12345")), RetainOutcome::Stored);
        assert_eq!(store.set(message("a/2", "12345")), RetainOutcome::Stored);
        assert_eq!(store.bytes(), 16);
        assert_eq!(store.set(message("a/3", "12345")), RetainOutcome::Full);
        assert_eq!(
            store.set(message("a/2", "1234567890")),
            RetainOutcome::Full,
            "a larger replacement that does not fit"
        );
        assert_eq!(
            store.get("a/2").map(|m| m.payload.clone()),
            Some("12345".into()),
            "keeps what it had"
        );
        assert_eq!(store.set(message("a/2", "1")), RetainOutcome::Replaced);
        assert_eq!(store.bytes(), 12, "a smaller replacement frees bytes");
        assert_eq!(store.set(message("a/3", "12345")), RetainOutcome::Stored);
        assert_eq!(store.bytes(), 20);
        assert_eq!(store.set(message("a/4", "1")), RetainOutcome::Full);
        assert_eq!(store.set(message("a/1", "")), RetainOutcome::Cleared);
        assert_eq!(store.bytes(), 12, "clearing frees its bytes");
        assert_eq!(store.set(message("a/4", "1")), RetainOutcome::Stored);
        assert_eq!(store.refused(), 3);
        assert_eq!(store.set(message("a/4", "")), RetainOutcome::Cleared);
        assert_eq!(store.set(message("a/2", "")), RetainOutcome::Cleared);
        assert_eq!(store.set(message("a/3", "")), RetainOutcome::Cleared);
        assert_eq!((store.len(), store.bytes()), (0, 0));
    }
}

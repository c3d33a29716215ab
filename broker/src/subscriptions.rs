//! The subscription tree: topic filters by level, so that matching a topic visits only the
//! branches that can match it, not every subscription.
//!
//! Clients choose how deep the tree goes (a filter may have thousands of levels), so no
//! walk over it recurses: inserting, matching, removing and dropping all loop.

use std::collections::HashMap;
use std::fmt;

use fieldbridge_mqtt::codec::QoS;
use fieldbridge_mqtt::topic::split_level;

/// Identifies a subscriber (a session) in the tree.
pub type SubscriberId = u64;

/// Capacity below which a map is never shrunk: small maps are not worth a rehash.
const MIN_SHRINK_CAPACITY: usize = 1024;

/// The capacity a map of `len` entries out of `capacity` should shrink to, if any. A map
/// that held thousands of entries (a flood of clients) keeps its table after they leave
/// unless shrunk. Only at most an eighth full, and to twice its length: churn around a
/// steady size never rehashes, and shrinking again takes another 3/4 of the entries gone.
pub(crate) fn sparse_capacity(len: usize, capacity: usize) -> Option<usize> {
    (capacity > MIN_SHRINK_CAPACITY && len <= capacity / 8)
        .then(|| (len * 2).max(MIN_SHRINK_CAPACITY))
}

fn shrink_if_sparse<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if let Some(capacity) = sparse_capacity(map.len(), map.capacity()) {
        map.shrink_to(capacity);
    }
}

/// What a session asked of one subscription: granted QoS, and MQTT 5's options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    pub qos: QoS,
    /// Not sent messages its own session published.
    pub no_local: bool,
    /// Live messages keep their RETAIN flag.
    pub retain_as_published: bool,
    /// Its Subscription Identifier (1 to 268,435,455), 0 for none.
    pub identifier: u32,
}

impl From<QoS> for Subscription {
    /// A subscription as MQTT 3.1.1 knows them.
    fn from(qos: QoS) -> Self {
        Self {
            qos,
            no_local: false,
            retain_as_published: false,
            identifier: 0,
        }
    }
}

/// One subscriber of a filter: its subscription and what routing hands back for it.
#[derive(Debug, Clone)]
struct Entry<S> {
    subscription: Subscription,
    subscriber: S,
}

struct Node<S> {
    children: HashMap<Box<str>, Node<S>>,
    plus: Option<Box<Node<S>>>,
    /// Subscribers of the filter ending at this node.
    exact: HashMap<SubscriberId, Entry<S>>,
    /// Subscribers of this node's filter followed by `/#`.
    multi: HashMap<SubscriberId, Entry<S>>,
}

impl<S> Default for Node<S> {
    fn default() -> Self {
        Self {
            children: HashMap::new(),
            plus: None,
            exact: HashMap::new(),
            multi: HashMap::new(),
        }
    }
}

impl<S> Node<S> {
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.exact.is_empty()
            && self.multi.is_empty()
    }

    /// Whether the node holds more than the one branch a walk came through: it stays when
    /// that branch is cut off.
    fn holds_more_than_one_branch(&self) -> bool {
        !self.exact.is_empty()
            || !self.multi.is_empty()
            || self.children.len() + usize::from(self.plus.is_some()) > 1
    }

    /// The child a filter level leads to.
    fn child(&self, level: &str) -> Option<&Node<S>> {
        match level {
            "+" => self.plus.as_deref(),
            _ => self.children.get(level),
        }
    }

    fn take_children(&mut self, into: &mut Vec<Node<S>>) {
        into.extend(self.children.drain().map(|(_, child)| child));
        if let Some(plus) = self.plus.take() {
            into.push(*plus);
        }
    }
}

impl<S> Drop for Node<S> {
    /// Takes the branches apart one node at a time: the generated drop would recurse once
    /// per level.
    fn drop(&mut self) {
        if self.children.is_empty() && self.plus.is_none() {
            return;
        }
        let mut pending = Vec::new();
        self.take_children(&mut pending);
        while let Some(mut node) = pending.pop() {
            node.take_children(&mut pending);
        }
    }
}

/// Every subscription of every session, keyed by filter.
pub struct SubscriptionTree<S> {
    root: Node<S>,
    count: usize,
}

impl<S> Default for SubscriptionTree<S> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            count: 0,
        }
    }
}

impl<S> fmt::Debug for SubscriptionTree<S> {
    /// The count only: printing the nodes would recurse as deep as the deepest filter.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionTree")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

/// A subscriber a topic matched, once, whatever the number of its matching filters: at
/// the highest QoS among them, keeping the RETAIN flag if one of them does, skipped for its
/// own messages only if all of them are No Local, and with every identifier they carry.
#[derive(Debug, Clone)]
pub struct Matched<S> {
    pub id: SubscriberId,
    pub qos: QoS,
    pub subscriber: S,
    pub retain_as_published: bool,
    pub no_local: bool,
    /// Subscription Identifiers, in no particular order; empty for most subscriptions.
    pub identifiers: Vec<u32>,
}

impl<S> Matched<S> {
    fn new(id: SubscriberId, subscription: Subscription, subscriber: S) -> Self {
        Self {
            id,
            qos: subscription.qos,
            subscriber,
            retain_as_published: subscription.retain_as_published,
            no_local: subscription.no_local,
            identifiers: match subscription.identifier {
                0 => Vec::new(),
                identifier => vec![identifier],
            },
        }
    }

    /// Folds in another matching subscription of the same subscriber.
    fn merge(&mut self, other: Matched<S>) {
        self.qos = self.qos.max(other.qos);
        self.retain_as_published |= other.retain_as_published;
        self.no_local &= other.no_local;
        self.identifiers.extend(other.identifiers);
    }
}

impl<S: Clone> SubscriptionTree<S> {
    /// Number of (subscriber, filter) pairs.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds or replaces the subscription of `id` to `filter`; true if it replaced one.
    pub fn subscribe(
        &mut self,
        filter: &str,
        id: SubscriberId,
        subscription: impl Into<Subscription>,
        subscriber: S,
    ) -> bool {
        let subscription = subscription.into();
        let mut node = &mut self.root;
        let mut rest = Some(filter);
        let mut multi = false;
        while let Some(levels) = rest {
            let (level, next) = split_level(levels);
            match level {
                "#" => {
                    multi = true;
                    break;
                }
                "+" => node = node.plus.get_or_insert_with(Box::default),
                _ => node = node.children.entry(level.into()).or_default(),
            }
            rest = next;
        }
        let map = if multi {
            &mut node.multi
        } else {
            &mut node.exact
        };
        let replaced = map
            .insert(
                id,
                Entry {
                    subscription,
                    subscriber,
                },
            )
            .is_some();
        if !replaced {
            self.count += 1;
        }
        replaced
    }

    /// Removes the subscription of `id` to `filter`; true if there was one. Branches left
    /// empty are pruned.
    pub fn unsubscribe(&mut self, filter: &str, id: SubscriberId) -> bool {
        // First walk: find the subscription, and the deepest node on its path that keeps
        // something else (the root at least). Everything below that node holds only this
        // subscription and goes as one branch.
        let mut node = &self.root;
        let mut rest = Some(filter);
        let mut depth = 0;
        let mut keep_depth = 0;
        let mut multi = false;
        while let Some(levels) = rest {
            let (level, next) = split_level(levels);
            if level == "#" {
                multi = true;
                break;
            }
            let Some(child) = node.child(level) else {
                return false;
            };
            if node.holds_more_than_one_branch() {
                keep_depth = depth;
            }
            node = child;
            depth += 1;
            rest = next;
        }
        let (own, other) = if multi {
            (&node.multi, &node.exact)
        } else {
            (&node.exact, &node.multi)
        };
        if !own.contains_key(&id) {
            return false;
        }
        if own.len() > 1 || !other.is_empty() || !node.children.is_empty() || node.plus.is_some() {
            keep_depth = depth;
        }

        // Second walk, down to the node that stays.
        let mut node = &mut self.root;
        let mut rest = Some(filter);
        for _ in 0..keep_depth {
            let Some(levels) = rest else { break };
            let (level, next) = split_level(levels);
            node = match level {
                "+" => node.plus.as_deref_mut(),
                _ => node.children.get_mut(level),
            }
            .expect("the first walk found this path");
            rest = next;
        }
        match rest.filter(|_| keep_depth < depth) {
            Some(levels) => match split_level(levels).0 {
                "+" => node.plus = None,
                level => {
                    node.children.remove(level);
                    shrink_if_sparse(&mut node.children);
                }
            },
            None if multi => {
                node.multi.remove(&id);
                shrink_if_sparse(&mut node.multi);
            }
            None => {
                node.exact.remove(&id);
                shrink_if_sparse(&mut node.exact);
            }
        }
        self.count -= 1;
        true
    }

    /// Appends every subscriber whose filters match `topic` to `out`, once each (see
    /// [`Matched`]). `out` is cleared first.
    pub fn matches(&self, topic: &str, out: &mut Vec<Matched<S>>) {
        out.clear();
        let mut contributing = 0;
        // Nodes still to visit with the levels left to match. Only a level where both a
        // literal child and `+` match leaves one here: most topics never allocate it.
        let mut pending: Vec<(&Node<S>, Option<&str>)> = Vec::new();
        let root = &self.root;
        let (level, next) = split_level(topic);
        // A filter whose first level is a wildcard does not match `$` topics.
        if !topic.starts_with('$') {
            Self::extend(&root.multi, out, &mut contributing);
            if let Some(plus) = root.plus.as_deref() {
                pending.push((plus, next));
            }
        }
        let mut current = root.children.get(level).map(|child| (child, next));
        // Depth first, literal child before `+`, as a recursive walk would go.
        while let Some((node, rest)) = current.take().or_else(|| pending.pop()) {
            Self::extend(&node.multi, out, &mut contributing);
            let Some(levels) = rest else {
                Self::extend(&node.exact, out, &mut contributing);
                continue;
            };
            let (level, next) = split_level(levels);
            current = node.children.get(level).map(|child| (child, next));
            if let Some(plus) = node.plus.as_deref() {
                if current.is_some() {
                    pending.push((plus, next));
                } else {
                    current = Some((plus, next));
                }
            }
        }
        if contributing > 1 {
            out.sort_unstable_by_key(|matched| matched.id);
            merge_duplicates(out);
        }
    }

    fn extend(
        map: &HashMap<SubscriberId, Entry<S>>,
        out: &mut Vec<Matched<S>>,
        contributing: &mut usize,
    ) {
        if map.is_empty() {
            return;
        }
        *contributing += 1;
        out.extend(
            map.iter()
                .map(|(&id, entry)| Matched::new(id, entry.subscription, entry.subscriber.clone())),
        );
    }
}

/// Merges the runs of one subscriber in a list sorted by subscriber.
fn merge_duplicates<S>(sorted: &mut Vec<Matched<S>>) {
    let mut kept: Vec<Matched<S>> = Vec::with_capacity(sorted.len());
    for matched in sorted.drain(..) {
        match kept.last_mut() {
            Some(last) if last.id == matched.id => last.merge(matched),
            _ => kept.push(matched),
        }
    }
    *sorted = kept;
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldbridge_mqtt::topic;

    #[test]
    fn overlapping_subscriptions_merge_their_options() {
        let mut tree = SubscriptionTree::default();
        let option = |qos, no_local, retain_as_published, identifier| Subscription {
            qos,
            no_local,
            retain_as_published,
            identifier,
        };
        tree.subscribe("a/b", 1, option(QoS::AtMostOnce, true, false, 4), "s");
        tree.subscribe("a/+", 1, option(QoS::AtLeastOnce, true, true, 9), "s");
        tree.subscribe("#", 1, option(QoS::AtMostOnce, false, false, 0), "s");
        tree.subscribe("a/b", 2, option(QoS::AtMostOnce, true, false, 0), "t");
        let mut out = Vec::new();
        tree.matches("a/b", &mut out);
        out.sort_by_key(|matched| matched.id);
        assert_eq!(out.len(), 2);
        let mut identifiers = out[0].identifiers.clone();
        identifiers.sort_unstable();
        assert_eq!(
            (
                out[0].qos,
                out[0].no_local,
                out[0].retain_as_published,
                identifiers
            ),
            (QoS::AtLeastOnce, false, true, vec![4, 9])
        );
        assert!(out[1].no_local && out[1].identifiers.is_empty());
    }

    #[test]
    fn sparse_capacity_only_for_large_mostly_empty_maps() {
        assert_eq!(sparse_capacity(0, 896), None);
        assert_eq!(sparse_capacity(3_585, 28_672), None);
        assert_eq!(sparse_capacity(3_584, 28_672), Some(7_168));
        assert_eq!(sparse_capacity(0, 28_672), Some(1024));
    }

    /// A filter node that thousands of subscribers have left gives its table back.
    #[test]
    fn subscriber_maps_shrink_when_subscribers_leave() {
        let mut tree = SubscriptionTree::default();
        for id in 0..15_000 {
            tree.subscribe("clients/all", id, QoS::AtMostOnce, "s");
            tree.subscribe(&format!("clients/{id}"), id, QoS::AtMostOnce, "s");
        }
        for id in 1..15_000 {
            assert!(tree.unsubscribe("clients/all", id));
            assert!(tree.unsubscribe(&format!("clients/{id}"), id));
        }
        let clients = &tree.root.children["clients"];
        assert_eq!(clients.children.len(), 2);
        assert!(clients.children.capacity() <= 2048);
        assert!(clients.children["all"].exact.capacity() <= 2048);
        assert_eq!(matched(&tree, "clients/all"), vec![(0, QoS::AtMostOnce)]);
    }

    fn matched(tree: &SubscriptionTree<&'static str>, topic: &str) -> Vec<(SubscriberId, QoS)> {
        let mut out = Vec::new();
        tree.matches(topic, &mut out);
        let mut result: Vec<_> = out.into_iter().map(|m| (m.id, m.qos)).collect();
        result.sort();
        result
    }

    fn ids(tree: &SubscriptionTree<&'static str>, topic: &str) -> Vec<SubscriberId> {
        matched(tree, topic).into_iter().map(|(id, _)| id).collect()
    }

    /// Runs `test` on a thread with a small stack, where a walk recursing once per level
    /// of a deep filter would overflow.
    fn on_small_stack(test: impl FnOnce() + Send + 'static) {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(test)
            .expect("thread starts")
            .join()
            .expect("no stack overflow");
    }

    #[test]
    fn wildcards_and_dollar_topics() {
        let mut tree = SubscriptionTree::default();
        tree.subscribe("a/b", 1, QoS::AtMostOnce, "one");
        tree.subscribe("a/+", 2, QoS::AtLeastOnce, "two");
        tree.subscribe("#", 3, QoS::ExactlyOnce, "three");
        tree.subscribe("a/#", 4, QoS::AtMostOnce, "four");
        tree.subscribe("$SYS/#", 5, QoS::AtMostOnce, "five");
        tree.subscribe("+/+/c", 6, QoS::AtMostOnce, "six");
        assert_eq!(tree.len(), 6);
        assert_eq!(
            matched(&tree, "a/b"),
            vec![
                (1, QoS::AtMostOnce),
                (2, QoS::AtLeastOnce),
                (3, QoS::ExactlyOnce),
                (4, QoS::AtMostOnce)
            ]
        );
        assert_eq!(
            matched(&tree, "a"),
            vec![(3, QoS::ExactlyOnce), (4, QoS::AtMostOnce)]
        );
        assert_eq!(
            matched(&tree, "a/b/c"),
            vec![
                (3, QoS::ExactlyOnce),
                (4, QoS::AtMostOnce),
                (6, QoS::AtMostOnce)
            ]
        );
        assert_eq!(
            matched(&tree, "$SYS/broker/uptime"),
            vec![(5, QoS::AtMostOnce)]
        );
        assert_eq!(matched(&tree, "$SYS/x/c"), vec![(5, QoS::AtMostOnce)]);
    }

    #[test]
    fn overlapping_filters_deliver_once_at_highest_qos() {
        let mut tree = SubscriptionTree::default();
        tree.subscribe("a/b", 7, QoS::AtMostOnce, "x");
        tree.subscribe("a/+", 7, QoS::ExactlyOnce, "x");
        tree.subscribe("#", 7, QoS::AtLeastOnce, "x");
        tree.subscribe("a/b", 8, QoS::AtLeastOnce, "y");
        assert_eq!(
            matched(&tree, "a/b"),
            vec![(7, QoS::ExactlyOnce), (8, QoS::AtLeastOnce)]
        );
    }

    #[test]
    fn replace_and_unsubscribe_prune() {
        let mut tree = SubscriptionTree::default();
        assert!(!tree.subscribe("a/+/c", 1, QoS::AtMostOnce, "x"));
        assert!(tree.subscribe("a/+/c", 1, QoS::AtLeastOnce, "x"));
        assert_eq!(tree.len(), 1);
        assert_eq!(matched(&tree, "a/b/c"), vec![(1, QoS::AtLeastOnce)]);
        assert!(!tree.unsubscribe("a/+/d", 1));
        assert!(!tree.unsubscribe("a/+/c", 2));
        assert!(!tree.unsubscribe("a/+", 1));
        assert!(!tree.unsubscribe("a/+/#", 1));
        assert!(tree.unsubscribe("a/+/c", 1));
        assert!(tree.is_empty());
        assert!(tree.root.is_empty(), "empty branches are pruned");
        tree.subscribe("x/#", 1, QoS::AtMostOnce, "x");
        assert!(tree.unsubscribe("x/#", 1));
        assert!(tree.root.is_empty());
        tree.subscribe("#", 1, QoS::AtMostOnce, "x");
        assert!(tree.unsubscribe("#", 1));
        assert!(tree.root.is_empty());
    }

    #[test]
    fn unsubscribe_keeps_what_shares_the_path() {
        let mut tree = SubscriptionTree::default();
        for (filter, id) in [
            ("a/b/c/d", 1),
            ("a/b", 2),
            ("a/b/#", 3),
            ("a/+/c/d", 4),
            ("a/b/c/e", 5),
            ("a/b/c/d", 6),
        ] {
            tree.subscribe(filter, id, QoS::AtMostOnce, "x");
        }
        assert!(tree.unsubscribe("a/b/c/d", 1));
        assert_eq!(ids(&tree, "a/b/c/d"), [3, 4, 6], "another subscriber stays");
        assert!(tree.unsubscribe("a/b/c/d", 6));
        assert_eq!(ids(&tree, "a/b/c/d"), [3, 4]);
        assert_eq!(ids(&tree, "a/b/c/e"), [3, 5], "the sibling branch stays");
        assert!(tree.unsubscribe("a/b/c/e", 5));
        assert_eq!(ids(&tree, "a/b"), [2, 3]);
        assert!(tree.unsubscribe("a/b", 2));
        assert_eq!(ids(&tree, "a/b"), [3], "the `#` at the same node stays");
        assert!(tree.unsubscribe("a/b/#", 3));
        assert_eq!(ids(&tree, "a/x/c/d"), [4]);
        assert!(tree.unsubscribe("a/+/c/d", 4));
        assert!(tree.is_empty());
        assert!(tree.root.is_empty());
    }

    #[test]
    fn matches_agree_with_the_topic_rules() {
        let filters = [
            "#", "+", "+/#", "a", "a/#", "a/+", "a/b", "a/b/#", "a/+/c", "+/b/+", "+/+/+", "a/b/c",
            "/", "/+", "+/", "a//c", "$SYS/#", "$SYS/+", "+/uptime", "a/+/+/#",
        ];
        let topics = [
            "a",
            "a/b",
            "a/b/c",
            "a/x/c",
            "a/b/c/d",
            "b",
            "x/b/y",
            "/",
            "/a",
            "a/",
            "a//c",
            "$SYS/uptime",
            "$SYS/a/b",
            "x/uptime",
            "b/b/b",
        ];
        let mut tree = SubscriptionTree::default();
        for (id, filter) in filters.iter().enumerate() {
            tree.subscribe(filter, id as SubscriberId, QoS::AtMostOnce, "x");
        }
        let check = |tree: &SubscriptionTree<&'static str>, live: &[bool]| {
            for topic in topics {
                let expected: Vec<SubscriberId> = filters
                    .iter()
                    .enumerate()
                    .filter(|&(id, filter)| live[id] && topic::matches(filter, topic))
                    .map(|(id, _)| id as SubscriberId)
                    .collect();
                assert_eq!(ids(tree, topic), expected, "{topic}");
            }
        };
        let mut live = vec![true; filters.len()];
        check(&tree, &live);
        for id in (0..filters.len()).step_by(2) {
            assert!(tree.unsubscribe(filters[id], id as SubscriberId));
            live[id] = false;
        }
        check(&tree, &live);
        for id in (1..filters.len()).step_by(2) {
            assert!(tree.unsubscribe(filters[id], id as SubscriberId));
        }
        assert!(tree.is_empty());
        assert!(tree.root.is_empty());
    }

    #[test]
    fn deep_filters_on_a_small_stack() {
        on_small_stack(|| {
            const LEVELS: usize = 50_000;
            let topic = vec!["l"; LEVELS].join("/");
            // `+` every other level, the last level `#`.
            let wild: Vec<&str> = (0..LEVELS)
                .map(|i| match i {
                    _ if i == LEVELS - 1 => "#",
                    _ if i % 2 == 1 => "+",
                    _ => "l",
                })
                .collect();
            let wild = wild.join("/");
            let all_plus = vec!["+"; LEVELS].join("/");
            let mut tree = SubscriptionTree::default();
            tree.subscribe(&topic, 1, QoS::AtMostOnce, "exact");
            tree.subscribe(&wild, 2, QoS::AtLeastOnce, "wild");
            tree.subscribe(&all_plus, 3, QoS::AtMostOnce, "plus");
            assert_eq!(
                matched(&tree, &topic),
                vec![
                    (1, QoS::AtMostOnce),
                    (2, QoS::AtLeastOnce),
                    (3, QoS::AtMostOnce)
                ]
            );
            let deeper = format!("{topic}/more");
            assert_eq!(ids(&tree, &deeper), [2]);
            let shorter = vec!["l"; LEVELS - 1].join("/");
            assert_eq!(ids(&tree, &shorter), [2], "`a/#` matches `a`");
            assert!(ids(&tree, &vec!["l"; LEVELS - 2].join("/")).is_empty());

            assert!(!tree.unsubscribe(&shorter, 1));
            assert!(tree.unsubscribe(&topic, 1));
            assert_eq!(ids(&tree, &topic), [2, 3]);
            assert!(tree.unsubscribe(&wild, 2));
            assert!(tree.unsubscribe(&all_plus, 3));
            assert!(tree.root.is_empty(), "deep branches are pruned");

            // Dropped with deep branches still in it.
            tree.subscribe(&topic, 1, QoS::AtMostOnce, "exact");
            tree.subscribe(&all_plus, 3, QoS::AtMostOnce, "plus");
            drop(tree);
        });
    }

    #[test]
    fn empty_levels() {
        let mut tree = SubscriptionTree::default();
        tree.subscribe("/", 1, QoS::AtMostOnce, "x");
        tree.subscribe("a//b", 2, QoS::AtMostOnce, "y");
        tree.subscribe("+/+", 3, QoS::AtMostOnce, "z");
        assert_eq!(
            matched(&tree, "/"),
            vec![(1, QoS::AtMostOnce), (3, QoS::AtMostOnce)]
        );
        assert_eq!(matched(&tree, "a//b"), vec![(2, QoS::AtMostOnce)]);
        assert_eq!(matched(&tree, "a"), vec![]);
    }
}

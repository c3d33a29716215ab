//! The subscription tree: topic filters by level, so that matching a topic visits only the
//! branches that can match it, not every subscription.

use std::collections::HashMap;

use fieldbridge_mqtt::codec::QoS;
use fieldbridge_mqtt::topic::split_level;

/// Identifies a subscriber (a session) in the tree.
pub type SubscriberId = u64;

/// One subscriber of a filter: its granted QoS and what routing hands back for it.
#[derive(Debug, Clone)]
struct Entry<S> {
    qos: QoS,
    subscriber: S,
}

#[derive(Debug)]
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
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.exact.is_empty()
            && self.multi.is_empty()
    }
}

/// Every subscription of every session, keyed by filter.
#[derive(Debug)]
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

/// A subscriber a topic matched, at the highest QoS of its matching filters.
#[derive(Debug, Clone)]
pub struct Matched<S> {
    pub id: SubscriberId,
    pub qos: QoS,
    pub subscriber: S,
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
    pub fn subscribe(&mut self, filter: &str, id: SubscriberId, qos: QoS, subscriber: S) -> bool {
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
        let replaced = map.insert(id, Entry { qos, subscriber }).is_some();
        if !replaced {
            self.count += 1;
        }
        replaced
    }

    /// Removes the subscription of `id` to `filter`; true if there was one.
    pub fn unsubscribe(&mut self, filter: &str, id: SubscriberId) -> bool {
        let removed = Self::remove_at(&mut self.root, Some(filter), id);
        if removed {
            self.count -= 1;
        }
        removed
    }

    fn remove_at(node: &mut Node<S>, rest: Option<&str>, id: SubscriberId) -> bool {
        let Some(levels) = rest else {
            return node.exact.remove(&id).is_some();
        };
        let (level, next) = split_level(levels);
        match level {
            "#" => node.multi.remove(&id).is_some(),
            "+" => {
                let Some(child) = node.plus.as_deref_mut() else {
                    return false;
                };
                let removed = Self::remove_at(child, next, id);
                if child.is_empty() {
                    node.plus = None;
                }
                removed
            }
            _ => {
                let Some(child) = node.children.get_mut(level) else {
                    return false;
                };
                let removed = Self::remove_at(child, next, id);
                if child.is_empty() {
                    node.children.remove(level);
                }
                removed
            }
        }
    }

    /// Appends every subscriber whose filters match `topic` to `out`, once each, at the
    /// highest granted QoS among its matching filters. `out` is cleared first.
    pub fn matches(&self, topic: &str, out: &mut Vec<Matched<S>>) {
        out.clear();
        let dollar = topic.starts_with('$');
        let mut contributing_nodes = 0;
        Self::collect(
            &self.root,
            Some(topic),
            dollar,
            out,
            &mut contributing_nodes,
        );
        if contributing_nodes > 1 {
            out.sort_unstable_by(|a, b| a.id.cmp(&b.id).then(b.qos.cmp(&a.qos)));
            out.dedup_by_key(|matched| matched.id);
        }
    }

    fn collect(
        node: &Node<S>,
        rest: Option<&str>,
        first_dollar: bool,
        out: &mut Vec<Matched<S>>,
        contributing: &mut usize,
    ) {
        if !first_dollar {
            Self::extend(&node.multi, out, contributing);
        }
        let Some(levels) = rest else {
            Self::extend(&node.exact, out, contributing);
            return;
        };
        let (level, next) = split_level(levels);
        if let Some(child) = node.children.get(level) {
            Self::collect(child, next, false, out, contributing);
        }
        if !first_dollar {
            if let Some(child) = node.plus.as_deref() {
                Self::collect(child, next, false, out, contributing);
            }
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
        out.extend(map.iter().map(|(&id, entry)| Matched {
            id,
            qos: entry.qos,
            subscriber: entry.subscriber.clone(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matched(tree: &SubscriptionTree<&'static str>, topic: &str) -> Vec<(SubscriberId, QoS)> {
        let mut out = Vec::new();
        tree.matches(topic, &mut out);
        let mut result: Vec<_> = out.into_iter().map(|m| (m.id, m.qos)).collect();
        result.sort();
        result
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
        assert!(tree.unsubscribe("a/+/c", 1));
        assert!(tree.is_empty());
        assert!(tree.root.is_empty(), "empty branches are pruned");
        tree.subscribe("x/#", 1, QoS::AtMostOnce, "x");
        assert!(tree.unsubscribe("x/#", 1));
        assert!(tree.root.is_empty());
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

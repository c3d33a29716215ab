//! Every subscription the router matches: ordinary ones in one tree, and shared ones
//! (`$share/<group>/<filter>`, MQTT 5 section 4.8.2, offered to 3.1.1 clients as well) in
//! a second tree whose matches are narrowed to one member per group, in turn.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use fieldbridge_mqtt::topic::shared_subscription;

use crate::subscriptions::{Matched, SubscriberId, Subscription, SubscriptionTree};

/// A session's place in one group: the shared tree keys it by a number of its own, since
/// one session may belong to several groups with the same filter.
#[derive(Debug, Clone)]
struct Member<S> {
    group: Arc<str>,
    session: SubscriberId,
    subscriber: S,
}

#[derive(Debug, Default)]
struct Group {
    /// Subscriptions in the group (a member may share several filters).
    subscriptions: usize,
    /// Whose turn it is: moved on by routing, which holds the read lock only.
    turn: AtomicU64,
}

/// One session's membership of one group.
#[derive(Debug, Clone, Copy)]
struct Membership {
    /// Its key in the shared tree.
    key: SubscriberId,
    /// Filters it shares in the group.
    filters: usize,
}

/// The subscriptions of every session.
#[derive(Debug)]
pub struct Subscriptions<S> {
    plain: SubscriptionTree<S>,
    shared: SubscriptionTree<Member<S>>,
    members: HashMap<(Arc<str>, SubscriberId), Membership>,
    groups: HashMap<Arc<str>, Group>,
    next_member: SubscriberId,
}

impl<S> Default for Subscriptions<S> {
    fn default() -> Self {
        Self {
            plain: SubscriptionTree::default(),
            shared: SubscriptionTree::default(),
            members: HashMap::new(),
            groups: HashMap::new(),
            next_member: 1,
        }
    }
}

impl<S: Clone> Subscriptions<S> {
    /// Number of (session, filter) pairs.
    pub fn len(&self) -> usize {
        self.plain.len() + self.shared.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds or replaces the subscription of `id` to `filter` (shared or not); true if it
    /// replaced one. A `$share/` filter must be well-formed ([`shared_subscription`]).
    pub fn subscribe(
        &mut self,
        filter: &str,
        id: SubscriberId,
        subscription: impl Into<Subscription>,
        subscriber: S,
    ) -> bool {
        let Some((group, inner)) = shared_subscription(filter) else {
            return self.plain.subscribe(filter, id, subscription, subscriber);
        };
        let group: Arc<str> = match self.groups.get_key_value(group) {
            Some((known, _)) => known.clone(),
            None => group.into(),
        };
        let next = &mut self.next_member;
        let membership = self.members.entry((group.clone(), id)).or_insert_with(|| {
            *next += 1;
            Membership {
                key: *next,
                filters: 0,
            }
        });
        let member = Member {
            group: group.clone(),
            session: id,
            subscriber,
        };
        let replaced = self
            .shared
            .subscribe(inner, membership.key, subscription, member);
        if !replaced {
            membership.filters += 1;
            self.groups.entry(group).or_default().subscriptions += 1;
        }
        replaced
    }

    /// Removes the subscription of `id` to `filter`; true if there was one.
    pub fn unsubscribe(&mut self, filter: &str, id: SubscriberId) -> bool {
        let Some((group, inner)) = shared_subscription(filter) else {
            return self.plain.unsubscribe(filter, id);
        };
        let Some((shared_group, _)) = self.groups.get_key_value(group) else {
            return false;
        };
        let member = (shared_group.clone(), id);
        let Some(membership) = self.members.get_mut(&member) else {
            return false;
        };
        if !self.shared.unsubscribe(inner, membership.key) {
            return false;
        }
        membership.filters -= 1;
        if membership.filters == 0 {
            self.members.remove(&member);
        }
        if let Some(state) = self.groups.get_mut(group) {
            state.subscriptions -= 1;
            if state.subscriptions == 0 {
                self.groups.remove(group);
            }
        }
        true
    }

    /// Every session `topic` goes to: the ordinary matches (see
    /// [`SubscriptionTree::matches`]), then one member of each matching group, taking
    /// turns among the members `online` accepts while there are any.
    pub fn matches(&self, topic: &str, out: &mut Vec<Matched<S>>, online: impl Fn(&S) -> bool) {
        self.plain.matches(topic, out);
        if self.shared.is_empty() {
            return;
        }
        let mut members = Vec::new();
        self.shared.matches(topic, &mut members);
        members.sort_by(|a, b| a.subscriber.group.cmp(&b.subscriber.group));
        for group in members.chunk_by(|a, b| a.subscriber.group == b.subscriber.group) {
            let turn = self
                .groups
                .get(&group[0].subscriber.group)
                .map_or(0, |state| state.turn.fetch_add(1, Ordering::Relaxed));
            let present: Vec<&Matched<Member<S>>> = group
                .iter()
                .filter(|member| online(&member.subscriber.subscriber))
                .collect();
            let candidates = if present.is_empty() {
                group.iter().collect()
            } else {
                present
            };
            let chosen = candidates[(turn % candidates.len() as u64) as usize];
            out.push(Matched {
                id: chosen.subscriber.session,
                qos: chosen.qos,
                subscriber: chosen.subscriber.subscriber.clone(),
                retain_as_published: chosen.retain_as_published,
                no_local: chosen.no_local,
                identifiers: chosen.identifiers.clone(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldbridge_mqtt::codec::QoS;

    fn chosen(subscriptions: &Subscriptions<&'static str>, topic: &str) -> Vec<SubscriberId> {
        let mut out = Vec::new();
        subscriptions.matches(topic, &mut out, |name| !name.starts_with("away"));
        out.iter().map(|matched| matched.id).collect()
    }

    #[test]
    fn each_group_takes_a_message_in_turn_alongside_plain_subscribers() {
        let mut subscriptions = Subscriptions::default();
        subscriptions.subscribe("a/+", 1, QoS::AtMostOnce, "plain");
        subscriptions.subscribe("$share/g/a/#", 2, QoS::AtLeastOnce, "m2");
        subscriptions.subscribe("$share/g/a/b", 3, QoS::AtMostOnce, "m3");
        subscriptions.subscribe("$share/h/a/b", 2, QoS::AtMostOnce, "m2");
        assert_eq!(subscriptions.len(), 4);
        let mut counts = HashMap::new();
        for _ in 0..10 {
            let ids = chosen(&subscriptions, "a/b");
            // The plain subscriber, one of g, and h's only member.
            assert_eq!(ids.len(), 3, "{ids:?}");
            assert_eq!(ids[0], 1);
            *counts.entry(ids[1]).or_insert(0) += 1;
        }
        assert_eq!(counts, HashMap::from([(2, 5), (3, 5)]), "turns alternate");
        assert_eq!(chosen(&subscriptions, "x"), Vec::<SubscriberId>::new());
    }

    #[test]
    fn connected_members_come_first() {
        let mut subscriptions = Subscriptions::default();
        subscriptions.subscribe("$share/g/t", 1, QoS::AtMostOnce, "away-1");
        subscriptions.subscribe("$share/g/t", 2, QoS::AtMostOnce, "here");
        for _ in 0..4 {
            assert_eq!(chosen(&subscriptions, "t"), vec![2]);
        }
        subscriptions.unsubscribe("$share/g/t", 2);
        // Only absent members left: they still take messages (queued for them).
        assert_eq!(chosen(&subscriptions, "t"), vec![1]);
    }

    #[test]
    fn memberships_and_groups_go_with_their_last_subscription() {
        let mut subscriptions = Subscriptions::default();
        assert!(!subscriptions.subscribe("$share/g/a", 7, QoS::AtMostOnce, "s"));
        assert!(!subscriptions.subscribe("$share/g/b", 7, QoS::AtMostOnce, "s"));
        assert!(subscriptions.subscribe("$share/g/b", 7, QoS::AtLeastOnce, "s"));
        assert!(subscriptions.unsubscribe("$share/g/a", 7));
        assert_eq!(chosen(&subscriptions, "b"), vec![7], "b is still shared");
        assert!(!subscriptions.unsubscribe("$share/g/a", 7));
        assert!(!subscriptions.unsubscribe("$share/other/b", 7));
        assert!(subscriptions.unsubscribe("$share/g/b", 7));
        assert!(subscriptions.is_empty());
        assert!(subscriptions.members.is_empty() && subscriptions.groups.is_empty());
        assert_eq!(chosen(&subscriptions, "b"), Vec::<SubscriberId>::new());
    }
}

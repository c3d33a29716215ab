//! Scalable applications (`A:<org>:<app>`): every connection with the same client id gets
//! a session of its own (named `A:<org>:<app>#<n>` inside the broker), and a message that
//! several sessions of one group would receive goes to one of them, in turn.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::router::MatchBuffer;

/// Separates the group (the client id) from the member number in a session's name.
/// Client ids of the platform cannot contain it.
pub const MEMBER_SEPARATOR: char = '#';

/// Groups whose turn is remembered; beyond this the turns start over.
const MAX_GROUPS: usize = 65_536;

/// The session name of a member of a scalable application's group.
pub fn member_name(client_id: &str, member: u64) -> String {
    format!("{client_id}{MEMBER_SEPARATOR}{member}")
}

/// The group of a session name, if it is a member of one.
pub fn group_of(session_name: &str) -> Option<&str> {
    if !session_name.starts_with("A:") {
        return None;
    }
    session_name
        .split_once(MEMBER_SEPARATOR)
        .map(|(group, _)| group)
}

/// Whose turn it is in each group.
#[derive(Debug, Default)]
pub(crate) struct SharedGroups {
    turns: Mutex<HashMap<Box<str>, u64>>,
}

impl SharedGroups {
    /// Keeps one matched session per group (round robin), and every session outside groups.
    pub fn pick(&self, matches: &mut MatchBuffer) {
        let mut members: Vec<(&str, u64, usize)> = matches
            .iter()
            .enumerate()
            .filter_map(|(index, matched)| {
                group_of(&matched.subscriber.client_id)
                    .map(|group| (group, matched.subscriber.id, index))
            })
            .collect();
        if members.len() < 2 {
            return;
        }
        members.sort_unstable();
        let mut dropped = Vec::new();
        {
            let mut turns = self.turns.lock();
            if turns.len() > MAX_GROUPS {
                turns.clear();
            }
            for group in members.chunk_by(|a, b| a.0 == b.0) {
                if group.len() < 2 {
                    continue;
                }
                let turn = turns.entry(group[0].0.into()).or_insert(0);
                let chosen = (*turn % group.len() as u64) as usize;
                *turn = turn.wrapping_add(1);
                dropped.extend(
                    group
                        .iter()
                        .enumerate()
                        .filter(|(position, _)| *position != chosen)
                        .map(|(_, member)| member.2),
                );
            }
        }
        if dropped.is_empty() {
            return;
        }
        dropped.sort_unstable();
        let mut index = 0;
        matches.retain(|_| {
            let keep = dropped.binary_search(&index).is_err();
            index += 1;
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(member_name("A:acme:worker", 7), "A:acme:worker#7");
        assert_eq!(group_of("A:acme:worker#7"), Some("A:acme:worker"));
        assert_eq!(group_of("a:acme:worker"), None);
        assert_eq!(group_of("A:acme:worker"), None);
        assert_eq!(group_of("d:acme:t:i"), None);
    }
}

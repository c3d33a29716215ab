//! Topic aliases of one MQTT 5 connection (section 3.3.2.3.4): the first publish to a
//! topic carries the topic and a new alias, later ones the alias alone, up to the
//! broker's Topic Alias Maximum. They die with the connection.

use std::collections::HashMap;

#[derive(Debug, Default)]
pub(super) struct TopicAliases {
    maximum: u16,
    assigned: HashMap<String, u16>,
}

impl TopicAliases {
    /// Aliases for a connection whose broker allows `maximum` of them (0: none).
    pub(super) fn new(maximum: u16) -> Self {
        TopicAliases {
            maximum,
            assigned: HashMap::new(),
        }
    }

    /// The topic to send and the alias to send with it: the topic and a new alias the
    /// first time, an empty topic and the alias afterwards, the topic alone once every
    /// alias is taken.
    pub(super) fn apply(&mut self, topic: String) -> (String, Option<u16>) {
        if self.maximum == 0 {
            return (topic, None);
        }
        if let Some(&alias) = self.assigned.get(&topic) {
            return (String::new(), Some(alias));
        }
        let used = self.assigned.len();
        if used >= usize::from(self.maximum) {
            return (topic, None);
        }
        // `used` is below the u16 maximum.
        let alias = used as u16 + 1;
        self.assigned.insert(topic.clone(), alias);
        (topic, Some(alias))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_publish_names_the_topic_later_ones_only_the_alias() {
        let mut aliases = TopicAliases::new(2);
        assert_eq!(aliases.apply("a/1".into()), ("a/1".into(), Some(1)));
        assert_eq!(aliases.apply("a/1".into()), (String::new(), Some(1)));
        assert_eq!(aliases.apply("a/2".into()), ("a/2".into(), Some(2)));
        assert_eq!(
            aliases.apply("a/3".into()),
            ("a/3".into(), None),
            "all taken"
        );
        assert_eq!(aliases.apply("a/2".into()), (String::new(), Some(2)));
    }

    #[test]
    fn without_a_maximum_topics_go_as_they_are() {
        let mut aliases = TopicAliases::new(0);
        assert_eq!(aliases.apply("a/1".into()), ("a/1".into(), None));
        assert_eq!(aliases.apply("a/1".into()), ("a/1".into(), None));
    }
}

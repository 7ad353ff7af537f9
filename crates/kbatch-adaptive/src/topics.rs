//! The packed driver's topics: each gets a small id, so an event's batch key is two integers
//! (hashed and compared without touching the topic's name), and the topic of the previous
//! event is found without a lookup at all — a `send_many` call's records share one `Arc`.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::time::Instant;

use kbatch_core::{ErrorClass, Topic};
use rustc_hash::FxHasher;

/// A topic's partition count as the client told it.
#[derive(Debug)]
pub(crate) enum PartitionCount {
    /// Not asked yet.
    Unknown,
    /// The client's answer.
    Known(i32),
    /// The lookup failed: the topic's events fail with this until it is asked again.
    Failed {
        message: String,
        class: ErrorClass,
        at: Instant,
    },
}

/// What the driver knows of one topic.
#[derive(Debug)]
pub(crate) struct TopicState {
    pub(crate) topic: Topic,
    pub(crate) partitions: PartitionCount,
    /// Where keyless events without a partition go now; moves on when its batch is sent.
    pub(crate) sticky: Option<i32>,
}

/// Topic ids, in the order topics were first seen.
#[derive(Debug, Default)]
pub(crate) struct Topics {
    ids: HashMap<Topic, u32, BuildHasherDefault<FxHasher>>,
    states: Vec<TopicState>,
    /// The topic looked up last, by pointer.
    last: Option<(Topic, u32)>,
}

impl Topics {
    /// `topic`'s id, given it one if it is new.
    pub(crate) fn id(&mut self, topic: &Topic) -> u32 {
        if let Some((t, id)) = &self.last
            && Arc::ptr_eq(t, topic)
        {
            return *id;
        }
        let id = match self.ids.get(topic) {
            Some(id) => *id,
            None => {
                let id = u32::try_from(self.states.len()).unwrap_or(u32::MAX);
                self.ids.insert(Arc::clone(topic), id);
                self.states.push(TopicState {
                    topic: Arc::clone(topic),
                    partitions: PartitionCount::Unknown,
                    sticky: None,
                });
                id
            }
        };
        self.last = Some((Arc::clone(topic), id));
        id
    }

    /// The state of the topic with id `id` (an id [`id`](Self::id) gave).
    pub(crate) fn get(&mut self, id: u32) -> &mut TopicState {
        &mut self.states[id as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_keeps_its_id_whichever_arc_names_it() {
        let mut t = Topics::default();
        let a: Topic = "orders".into();
        let b: Topic = "payments".into();
        let (ia, ib) = (t.id(&a), t.id(&b));
        assert_ne!(ia, ib);
        // Another Arc with the same name: found by name, not pointer.
        let a2: Topic = "orders".into();
        assert_eq!(t.id(&a2), ia);
        assert_eq!(t.id(&a), ia);
        assert_eq!(t.id(&b), ib);
        assert_eq!(&*t.get(ib).topic, "payments");
        assert!(matches!(t.get(ia).partitions, PartitionCount::Unknown));
    }
}

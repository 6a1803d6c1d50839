//! The partitions a shard owns, and which of them have work this turn.
//!
//! A shard may own ten thousand partitions of which a handful are written at any moment. A turn
//! of its loop (group commit, acknowledgements, long polls, the next timer) must cost what the
//! busy partitions cost, not what all of them do. So slots live in a slab addressed by index,
//! found by (topic, partition) through an index map, and a *busy list* names those that may
//! need the turn: a request naming a partition marks it, and at the end of each turn only
//! those with work left stay marked (staged or unsynced data, acknowledgements waiting, parked
//! produces; long polls are woken by their data or by the shard's deadline heap). Work that arises without a request naming its partition (the
//! offsets expiry of a retention check, a `Forget`, closing) marks every partition for one
//! turn; those are rare.

use std::collections::HashMap;
use std::sync::Arc;

use super::request::PartitionId;
use super::slot::Slot;

#[derive(Default)]
pub(super) struct Slots {
    slab: Vec<Option<Entry>>,
    free: Vec<usize>,
    index: HashMap<Arc<str>, HashMap<u32, usize>>,
    /// Indexes marked busy, each once (`Entry::busy`), in no order.
    busy: Vec<usize>,
    /// Every slot counts as busy this turn.
    all: bool,
}

struct Entry {
    id: PartitionId,
    slot: Slot,
    busy: bool,
}

impl Slots {
    pub fn len(&self) -> usize {
        self.slab.len() - self.free.len()
    }

    fn position(&self, topic: &str, partition: u32) -> Option<usize> {
        self.index.get(topic).and_then(|m| m.get(&partition)).copied()
    }

    pub fn get_mut(&mut self, topic: &str, partition: u32) -> Option<&mut Slot> {
        let i = self.position(topic, partition)?;
        self.slab[i].as_mut().map(|e| &mut e.slot)
    }

    /// Adds a slot (replacing one of the same id), marked busy.
    pub fn insert(&mut self, id: PartitionId, slot: Slot) {
        if let Some(i) = self.position(&id.topic, id.partition) {
            if let Some(e) = self.slab[i].as_mut() {
                e.slot = slot;
            }
            self.mark_at(i);
            return;
        }
        let entry = Entry { id: id.clone(), slot, busy: false };
        let i = match self.free.pop() {
            Some(i) => {
                self.slab[i] = Some(entry);
                i
            }
            None => {
                self.slab.push(Some(entry));
                self.slab.len() - 1
            }
        };
        self.index.entry(id.topic).or_default().insert(id.partition, i);
        self.mark_at(i);
    }

    pub fn remove(&mut self, topic: &str, partition: u32) -> Option<Slot> {
        let partitions = self.index.get_mut(topic)?;
        let i = partitions.remove(&partition)?;
        if partitions.is_empty() {
            self.index.remove(topic);
        }
        let entry = self.slab[i].take()?;
        self.free.push(i);
        // A stale index in the busy list is skipped (or marks whatever reuses the place).
        Some(entry.slot)
    }

    /// Marks a partition as needing the next turn (a request named it).
    pub fn mark(&mut self, topic: &str, partition: u32) {
        if let Some(i) = self.position(topic, partition) {
            self.mark_at(i);
        }
    }

    fn mark_at(&mut self, i: usize) {
        if let Some(e) = self.slab[i].as_mut() {
            if !e.busy {
                e.busy = true;
                self.busy.push(i);
            }
        }
    }

    /// Every partition needs the next turn.
    pub fn mark_all(&mut self) {
        self.all = true;
    }

    /// The busy slots, mutably, each once; every slot after `mark_all`.
    pub fn busy_mut(&mut self) -> Vec<(&PartitionId, &mut Slot)> {
        if self.all {
            return self.iter_mut().collect();
        }
        self.busy.sort_unstable();
        self.busy.dedup();
        let mut out = Vec::with_capacity(self.busy.len());
        let mut rest: &mut [Option<Entry>] = &mut self.slab;
        let mut base = 0;
        for &i in &self.busy {
            if i < base || i - base >= rest.len() {
                continue;
            }
            let (_, tail) = rest.split_at_mut(i - base);
            let (one, tail) = tail.split_first_mut().expect("i is inside rest");
            if let Some(e) = one.as_mut() {
                out.push((&e.id, &mut e.slot));
            }
            rest = tail;
            base = i + 1;
        }
        out
    }

    /// The busy slots (every slot after `mark_all`).
    pub fn busy(&self) -> Box<dyn Iterator<Item = &Slot> + '_> {
        if self.all {
            return Box::new(self.iter().map(|(_, s)| s));
        }
        Box::new(self.busy.iter().filter_map(|&i| self.slab.get(i)?.as_ref()).map(|e| &e.slot))
    }

    /// Ends a turn: only the slots for which `has_work` holds stay busy.
    pub fn keep_busy(&mut self, has_work: impl Fn(&Slot) -> bool) {
        let all = std::mem::take(&mut self.all);
        let candidates: Vec<usize> =
            if all { (0..self.slab.len()).collect() } else { std::mem::take(&mut self.busy) };
        self.busy.clear();
        for i in candidates {
            if let Some(e) = self.slab.get_mut(i).and_then(Option::as_mut) {
                e.busy = has_work(&e.slot);
                if e.busy {
                    self.busy.push(i);
                }
            }
        }
        self.busy.sort_unstable();
        self.busy.dedup();
    }

    /// How many slots are busy.
    #[cfg(test)]
    pub fn busy_count(&self) -> usize {
        if self.all {
            self.len()
        } else {
            self.busy.len()
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&PartitionId, &Slot)> {
        self.slab.iter().filter_map(Option::as_ref).map(|e| (&e.id, &e.slot))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&PartitionId, &mut Slot)> {
        self.slab.iter_mut().filter_map(Option::as_mut).map(|e| (&e.id, &mut e.slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{LogConfig, Partition};

    fn slots(n: u32) -> (tempfile::TempDir, Slots) {
        let dir = tempfile::tempdir().unwrap();
        let mut io = crate::io::open(crate::io::BackendChoice::Fallback).unwrap();
        let mut slots = Slots::default();
        for p in 0..n {
            let log =
                Partition::open(&dir.path().join(format!("t-{p}")), LogConfig::default(), &mut *io).unwrap();
            let slot = Slot::new(log, crate::api::Clock::system()).unwrap();
            slots.insert(PartitionId { topic: Arc::from("t"), partition: p }, slot);
        }
        (dir, slots)
    }

    fn busy_ids(slots: &mut Slots) -> Vec<u32> {
        let mut ids: Vec<u32> = slots.busy_mut().into_iter().map(|(id, _)| id.partition).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn a_turn_visits_only_what_was_named_or_still_has_work() {
        let (_dir, mut slots) = slots(50);
        // New slots are busy once; idle ones drop out at the end of the turn.
        assert_eq!(slots.busy_count(), 50);
        slots.keep_busy(Slot::has_work);
        assert_eq!(slots.busy_count(), 0);
        assert!(busy_ids(&mut slots).is_empty());
        for p in [41, 7, 7, 19] {
            slots.mark("t", p);
        }
        slots.mark("other", 1);
        assert_eq!(busy_ids(&mut slots), vec![7, 19, 41], "each named slot once, nothing else");
        assert_eq!(slots.busy().count(), 3);
        slots.keep_busy(Slot::has_work);
        assert_eq!(slots.busy_count(), 0);
        slots.mark_all();
        assert_eq!(busy_ids(&mut slots).len(), 50);
        // A slot with work stays busy across turns until the work is done.
        slots.keep_busy(|s| s.log.dir().ends_with("t-3"));
        assert_eq!(busy_ids(&mut slots), vec![3]);
        slots.keep_busy(Slot::has_work);
        assert_eq!(slots.busy_count(), 0);
    }

    #[test]
    fn removed_slots_leave_the_busy_list_and_their_place_is_reused() {
        let (dir, mut slots) = slots(5);
        slots.keep_busy(Slot::has_work);
        slots.mark("t", 2);
        assert!(slots.remove("t", 2).is_some());
        assert!(slots.get_mut("t", 2).is_none());
        assert!(busy_ids(&mut slots).is_empty(), "a removed slot is not visited");
        assert_eq!(slots.len(), 4);
        let mut io = crate::io::open(crate::io::BackendChoice::Fallback).unwrap();
        let log = Partition::open(&dir.path().join("u-0"), LogConfig::default(), &mut *io).unwrap();
        slots.insert(
            PartitionId { topic: Arc::from("u"), partition: 0 },
            Slot::new(log, crate::api::Clock::system()).unwrap(),
        );
        assert_eq!(slots.len(), 5);
        assert_eq!(slots.slab.len(), 5, "the freed place was reused");
        let ids: Vec<String> =
            slots.busy_mut().into_iter().map(|(id, _)| format!("{}-{}", id.topic, id.partition)).collect();
        assert_eq!(ids, vec!["u-0"]);
        assert!(slots.get_mut("u", 0).is_some() && slots.get_mut("t", 4).is_some());
    }
}

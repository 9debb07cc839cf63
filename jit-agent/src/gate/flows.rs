//! The agent's mirror of the grant map, indexed by stats slot so that
//! changing or removing one grant touches only its own flow keys.

use std::collections::{hash_map, HashMap};

use jit_common::{FlowKey, GrantSet};

#[derive(Default)]
pub struct FlowTable {
    sets: HashMap<FlowKey, GrantSet>,
    by_slot: HashMap<u32, Vec<FlowKey>>,
}

fn slots(set: &GrantSet) -> impl Iterator<Item = u32> + '_ {
    set.rules[..(set.count as usize).min(set.rules.len())]
        .iter()
        .map(|r| r.stats_index)
}

impl FlowTable {
    pub fn get(&self, key: &FlowKey) -> Option<&GrantSet> {
        self.sets.get(key)
    }

    /// Replaces a key's set; an empty set removes the key.
    pub fn set(&mut self, key: FlowKey, set: GrantSet) {
        if let Some(old) = self.sets.remove(&key) {
            for slot in slots(&old) {
                if let hash_map::Entry::Occupied(mut e) = self.by_slot.entry(slot) {
                    e.get_mut().retain(|k| *k != key);
                    if e.get().is_empty() {
                        e.remove();
                    }
                }
            }
        }
        if set.count == 0 {
            return;
        }
        for slot in slots(&set) {
            let keys = self.by_slot.entry(slot).or_default();
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        self.sets.insert(key, set);
    }

    /// The flow keys holding rules of a slot.
    pub fn keys_of(&self, slot: u32) -> &[FlowKey] {
        self.by_slot.get(&slot).map_or(&[], Vec::as_slice)
    }

    /// Every slot with a rule in some set.
    pub fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_slot.keys().copied()
    }

    pub fn len(&self) -> usize {
        self.sets.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&FlowKey, &GrantSet)> {
        self.sets.iter()
    }
}

#[cfg(test)]
mod tests {
    use jit_common::GrantRule;

    use super::*;

    fn key(n: u8) -> FlowKey {
        FlowKey {
            src: [n; 16],
            zone_id: 1,
            proto: 6,
            _pad: [0; 3],
        }
    }

    fn set(slots: &[u32]) -> GrantSet {
        let mut set = GrantSet::default();
        for slot in slots {
            set.rules[set.count as usize] = GrantRule {
                stats_index: *slot,
                ..GrantRule::default()
            };
            set.count += 1;
        }
        set
    }

    #[test]
    fn the_slot_index_follows_every_change() {
        let mut t = FlowTable::default();
        t.set(key(1), set(&[7, 8]));
        t.set(key(2), set(&[7]));
        let mut keys = t.keys_of(7).to_vec();
        keys.sort_by_key(|k| k.src);
        assert_eq!(keys, [key(1), key(2)]);
        assert_eq!(t.keys_of(8), [key(1)]);

        t.set(key(1), set(&[8]));
        assert_eq!(t.keys_of(7), [key(2)]);
        t.set(key(2), GrantSet::default());
        assert!(t.keys_of(7).is_empty());
        assert!(t.get(&key(2)).is_none());
        assert_eq!(t.len(), 1);
        assert_eq!(t.slots().collect::<Vec<_>>(), [8]);
        t.set(key(1), set(&[8, 8]));
        assert_eq!(t.keys_of(8), [key(1)], "a key is listed once per slot");
    }
}

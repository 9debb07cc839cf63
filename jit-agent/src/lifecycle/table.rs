//! Requests or grants by id, with indexes on the live ones (pending
//! requests, active grants), so the work per operation does not grow with
//! the history the engine keeps.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use chrono::{DateTime, Utc};

use super::state::{Grant, GrantState, Request, RequestState};

/// A record the table can index.
pub trait Record: Clone {
    fn id(&self) -> u64;
    /// The boot-clock deadline of a live record; `None` once it has ended.
    fn live_deadline(&self) -> Option<u64>;
    /// When an ended record ended (wall clock).
    fn ended_at(&self) -> Option<DateTime<Utc>>;
    fn user(&self) -> &str;
    fn target(&self) -> &str;
    fn source(&self) -> IpAddr;
}

impl Record for Grant {
    fn id(&self) -> u64 {
        self.id
    }
    fn live_deadline(&self) -> Option<u64> {
        (self.state == GrantState::Active).then_some(self.expires_boot_ns)
    }
    fn ended_at(&self) -> Option<DateTime<Utc>> {
        self.ended
            .as_ref()
            .filter(|_| self.state != GrantState::Active)
            .map(|c| c.wall)
    }
    fn user(&self) -> &str {
        &self.user
    }
    fn target(&self) -> &str {
        &self.target
    }
    fn source(&self) -> IpAddr {
        self.source
    }
}

impl Record for Request {
    fn id(&self) -> u64 {
        self.id
    }
    fn live_deadline(&self) -> Option<u64> {
        (self.state == RequestState::Pending).then_some(self.pending_until_boot_ns)
    }
    fn ended_at(&self) -> Option<DateTime<Utc>> {
        self.closed
            .as_ref()
            .filter(|_| self.state != RequestState::Pending)
            .map(|c| c.wall)
    }
    fn user(&self) -> &str {
        &self.user
    }
    fn target(&self) -> &str {
        &self.target
    }
    fn source(&self) -> IpAddr {
        self.source
    }
}

type LiveKey = (String, String, IpAddr);

#[derive(Clone, Debug)]
pub struct Table<T> {
    all: BTreeMap<u64, T>,
    live_ids: BTreeSet<u64>,
    by_deadline: BTreeSet<(u64, u64)>,
    by_key: HashMap<LiveKey, Vec<u64>>,
    by_end: BTreeSet<(DateTime<Utc>, u64)>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            all: BTreeMap::new(),
            live_ids: BTreeSet::new(),
            by_deadline: BTreeSet::new(),
            by_key: HashMap::new(),
            by_end: BTreeSet::new(),
        }
    }
}

fn live_key<T: Record>(r: &T) -> LiveKey {
    (r.user().to_owned(), r.target().to_owned(), r.source())
}

impl<T: Record> Table<T> {
    /// Inserts or replaces a record; returns the one it replaced.
    pub fn insert(&mut self, record: T) -> Option<T> {
        let id = record.id();
        let old = self.all.remove(&id);
        if let Some(old) = &old {
            self.unindex(old);
        }
        self.index(&record);
        self.all.insert(id, record);
        old
    }

    /// Changes a record in place and re-indexes it.
    pub fn modify(&mut self, id: u64, f: impl FnOnce(&mut T)) -> Option<&T> {
        let mut record = self.all.remove(&id)?;
        self.unindex(&record);
        f(&mut record);
        self.index(&record);
        self.all.insert(id, record);
        self.all.get(&id)
    }

    pub fn remove(&mut self, id: u64) -> Option<T> {
        let record = self.all.remove(&id)?;
        self.unindex(&record);
        Some(record)
    }

    pub fn get(&self, id: u64) -> Option<&T> {
        self.all.get(&id)
    }

    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// Every record, by id.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.all.values()
    }

    /// Live records, by id.
    pub fn live(&self) -> impl Iterator<Item = &T> {
        self.live_ids.iter().filter_map(|id| self.all.get(id))
    }

    pub fn live_count(&self) -> usize {
        self.live_ids.len()
    }

    /// Ids of live records whose deadline is at or before `now`, earliest
    /// first.
    pub fn due(&self, now: u64) -> Vec<u64> {
        self.by_deadline
            .range(..=(now, u64::MAX))
            .map(|(_, id)| *id)
            .collect()
    }

    pub fn next_deadline(&self) -> Option<u64> {
        self.by_deadline.first().map(|(at, _)| *at)
    }

    /// A live record for this user, target and source, if any.
    pub fn live_for(&self, user: &str, target: &str, source: IpAddr) -> Option<&T> {
        let ids = self
            .by_key
            .get(&(user.to_owned(), target.to_owned(), source))?;
        ids.first().and_then(|id| self.all.get(id))
    }

    /// Ids of ended records that ended before `cutoff`.
    pub fn ended_before(&self, cutoff: DateTime<Utc>) -> Vec<u64> {
        self.by_end
            .range(..(cutoff, 0))
            .map(|(_, id)| *id)
            .collect()
    }

    fn index(&mut self, r: &T) {
        if let Some(at) = r.ended_at() {
            self.by_end.insert((at, r.id()));
        }
        if let Some(at) = r.live_deadline() {
            self.live_ids.insert(r.id());
            self.by_deadline.insert((at, r.id()));
            self.by_key.entry(live_key(r)).or_default().push(r.id());
        }
    }

    fn unindex(&mut self, r: &T) {
        if let Some(at) = r.ended_at() {
            self.by_end.remove(&(at, r.id()));
        }
        if let Some(at) = r.live_deadline() {
            self.live_ids.remove(&r.id());
            self.by_deadline.remove(&(at, r.id()));
            let key = live_key(r);
            if let Some(ids) = self.by_key.get_mut(&key) {
                ids.retain(|id| *id != r.id());
                if ids.is_empty() {
                    self.by_key.remove(&key);
                }
            }
        }
    }
}

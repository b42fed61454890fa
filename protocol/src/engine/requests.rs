//! The requests in flight at this node, indexed by the edge each came in over and the
//! edge each went out on, so that whatever happens to a channel finds its requests.

use std::collections::{BTreeMap, BTreeSet};

use crate::pending::Pending;
use crate::types::{ChannelId, RequestId};

/// Requests in flight here, by id and by channel.
#[derive(Debug, Default)]
pub(super) struct Requests {
    /// Boxed: a `Pending` is about 600 bytes, and B-tree inserts and removals shift
    /// their neighbours in the node.
    by_id: BTreeMap<RequestId, Box<Pending>>,
    /// Requests whose upstream edge is the channel (we owe the peer there).
    by_up: BTreeMap<ChannelId, BTreeSet<RequestId>>,
    /// Requests whose downstream edge is the channel (the peer owes us there).
    by_down: BTreeMap<ChannelId, BTreeSet<RequestId>>,
    /// Bytes bought by the requests in `by_up` (request body plus response limit), per
    /// channel.
    up_bytes: BTreeMap<ChannelId, u64>,
}

impl Requests {
    /// One request.
    pub(super) fn get(&self, id: &RequestId) -> Option<&Pending> {
        self.by_id.get(id).map(|p| &**p)
    }

    /// One request, to change. Its edges must not change (they are indexed).
    pub(super) fn get_mut(&mut self, id: &RequestId) -> Option<&mut Pending> {
        self.by_id.get_mut(id).map(|p| &mut **p)
    }

    /// Whether the request is in flight here.
    pub(super) fn contains(&self, id: &RequestId) -> bool {
        self.by_id.contains_key(id)
    }

    /// How many requests are in flight here.
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Every request in flight, by id.
    pub(super) fn values(&self) -> impl Iterator<Item = &Pending> {
        self.by_id.values().map(|p| &**p)
    }

    /// Adds (or replaces) a request and indexes it by its edges.
    pub(super) fn insert(&mut self, p: Pending) {
        self.remove(&p.id);
        if let Some(u) = &p.up {
            self.by_up.entry(u.channel).or_default().insert(p.id);
            let bytes = self.up_bytes.entry(u.channel).or_default();
            *bytes = bytes.saturating_add(p.core.priced_bytes());
        }
        if let Some(d) = &p.down {
            self.by_down.entry(d.channel).or_default().insert(p.id);
        }
        self.by_id.insert(p.id, Box::new(p));
    }

    /// Removes a request and its index entries.
    pub(super) fn remove(&mut self, id: &RequestId) -> Option<Pending> {
        let p = self.by_id.remove(id)?;
        if let Some(u) = &p.up {
            if let Some(s) = self.by_up.get_mut(&u.channel) {
                s.remove(id);
                if s.is_empty() {
                    self.by_up.remove(&u.channel);
                }
            }
            if let Some(b) = self.up_bytes.get_mut(&u.channel) {
                *b = b.saturating_sub(p.core.priced_bytes());
                if *b == 0 {
                    self.up_bytes.remove(&u.channel);
                }
            }
        }
        if let Some(d) = &p.down {
            if let Some(s) = self.by_down.get_mut(&d.channel) {
                s.remove(id);
                if s.is_empty() {
                    self.by_down.remove(&d.channel);
                }
            }
        }
        Some(*p)
    }

    /// How many requests arrived over `channel`, and the bytes they bought.
    pub(super) fn load_up(&self, channel: ChannelId) -> (usize, u64) {
        (
            self.by_up.get(&channel).map_or(0, BTreeSet::len),
            self.up_bytes.get(&channel).copied().unwrap_or(0),
        )
    }

    /// How many requests went out over `channel`.
    pub(super) fn load_down(&self, channel: ChannelId) -> usize {
        self.by_down.get(&channel).map_or(0, BTreeSet::len)
    }

    /// Requests whose upstream edge is `channel`.
    pub(super) fn up_of(&self, channel: ChannelId) -> impl Iterator<Item = &RequestId> {
        self.by_up.get(&channel).into_iter().flatten()
    }

    /// Requests whose downstream edge is `channel`.
    pub(super) fn down_of(&self, channel: ChannelId) -> impl Iterator<Item = &RequestId> {
        self.by_down.get(&channel).into_iter().flatten()
    }

    /// The ids of [`Requests::up_of`], collected (to change them while iterating).
    pub(super) fn ids_up(&self, channel: ChannelId) -> Vec<RequestId> {
        self.up_of(channel).copied().collect()
    }

    /// The ids of [`Requests::down_of`], collected.
    pub(super) fn ids_down(&self, channel: ChannelId) -> Vec<RequestId> {
        self.down_of(channel).copied().collect()
    }
}

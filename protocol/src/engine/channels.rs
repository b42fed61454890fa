//! The engine's view of each of its channels: the persisted record plus what lives
//! only in memory (sync schedule, liveness, earnings ledger, held frames, kept
//! closing messages, acks due).

use std::collections::{BTreeMap, VecDeque};

use crate::amount::Amount;
use crate::channel::ChannelRecord;
use crate::messages::Message;
use crate::time::Time;
use crate::types::{ChannelUpdate, RequestId};

use super::{Engine, Timer};

/// Earnings and losses are summed per this many milliseconds: a window of an hour is
/// then at most 3,600 entries per edge, however many requests it carries (one entry
/// per request held 25 million of them at 7,000 requests a second, and summed them at
/// every sync).
const LEDGER_BUCKET_MS: u64 = 1_000;

/// What an edge earned and lost recently, for the unprofitable-edge heuristic: sums
/// per [`LEDGER_BUCKET_MS`], oldest first, none older than the heuristic's window.
#[derive(Clone, Debug, Default)]
pub(super) struct Ledger {
    pub(super) earnings: VecDeque<(Time, Amount)>,
    pub(super) losses: VecDeque<(Time, Amount)>,
}

/// Adds `amount` at `now` to `list`'s last bucket, or starts the next one.
fn add(list: &mut VecDeque<(Time, Amount)>, now: Time, amount: Amount) {
    let bucket = Time(
        now.ms()
            .saturating_sub(now.ms().checked_rem(LEDGER_BUCKET_MS).unwrap_or(0)),
    );
    if let Some((t, sum)) = list.back_mut() {
        if *t == bucket {
            if let Ok(total) = sum.checked_add(amount) {
                *sum = total;
                return;
            }
        }
    }
    list.push_back((bucket, amount));
}

impl Ledger {
    /// Records what the edge earned at `now`, keeping `window_ms` of history.
    pub(super) fn earned(&mut self, now: Time, amount: Amount, window_ms: u64) {
        add(&mut self.earnings, now, amount);
        self.prune(now.minus(window_ms));
    }

    /// Records what the edge lost at `now`, keeping `window_ms` of history.
    pub(super) fn lost(&mut self, now: Time, amount: Amount, window_ms: u64) {
        add(&mut self.losses, now, amount);
        self.prune(now.minus(window_ms));
    }

    /// Forgets the buckets that started before `since`.
    pub(super) fn prune(&mut self, since: Time) {
        while self.earnings.front().is_some_and(|(t, _)| *t < since) {
            self.earnings.pop_front();
        }
        while self.losses.front().is_some_and(|(t, _)| *t < since) {
            self.losses.pop_front();
        }
    }
}

/// One of our channels: its persisted record and its in-memory state.
#[derive(Clone, Debug)]
pub(super) struct ChannelRt {
    pub(super) rec: ChannelRecord,
    pub(super) next_sync: Time,
    pub(super) last_heard: Option<Time>,
    pub(super) silent_reported: bool,
    pub(super) last_peer_sync: Option<(u64, Time)>,
    pub(super) ledger: Ledger,
    /// False from a disconnect until the peer's `Reestablish` arrives; frames for the
    /// peer are held meanwhile.
    pub(super) ready: bool,
    /// The peer's `Reestablish` has arrived since the connection came up: a second
    /// one is a protocol violation.
    pub(super) reestablished: bool,
    pub(super) held: Vec<Message>,
    /// Closing messages (response or proof, without fee) recently sent to the peer,
    /// and their insertion order for pruning by age, count and bytes.
    pub(super) closings: BTreeMap<RequestId, Box<Message>>,
    pub(super) closing_order: VecDeque<(Time, RequestId)>,
    /// The bytes `closings` holds (response bodies; a proof counts as 256).
    pub(super) closing_bytes: u64,
    /// Updates accepted from the peer and not yet acknowledged, with the write each
    /// needs durable first, in seq order.
    pub(super) acks_due: VecDeque<(u64, ChannelUpdate)>,
}

impl ChannelRt {
    /// Whether a frame for the peer need not be held while it is away. Frames carrying
    /// updates come back through the retransmission of unacknowledged updates, acks
    /// through the re-ack, heartbeats are stale by then, and a `Reestablish` belongs to
    /// the connection it was made for: only the rest is worth holding (so `held` is
    /// bounded by the requests in flight, not by how long the peer is away). A
    /// response or proof kept among the closings is resent from there if the peer
    /// still awaits it (holding it too would send it twice, and hold a MiB body per
    /// response for as long as the peer is away).
    pub(super) fn supersedes(&self, message: &Message) -> bool {
        let kept = match message {
            Message::Response { request, .. } | Message::Proof { request, .. } => {
                self.closings.contains_key(request)
            }
            _ => false,
        };
        kept || message.carries_update()
            || matches!(
                message,
                Message::Ack { .. } | Message::Sync { .. } | Message::Reestablish { .. }
            )
    }
}

impl Engine {
    pub(super) fn install_channel(&mut self, rec: ChannelRecord, now: Time) {
        let id = rec.id();
        self.topology.insert_edge(rec.edge.clone());
        if let Some(n) = &rec.severed {
            self.topology.sever(n.notice.channel);
        }
        let next_sync = Time(rec.edge.terms.next_sync_after(now.ms()));
        self.by_peer.insert(rec.peer, id);
        if rec.severed.is_none() {
            self.timers.insert((next_sync, Timer::Sync(id)));
        }
        self.channels.insert(
            id,
            ChannelRt {
                rec,
                next_sync,
                last_heard: None,
                silent_reported: false,
                last_peer_sync: None,
                ledger: Ledger::default(),
                ready: true,
                reestablished: false,
                held: Vec::new(),
                closings: BTreeMap::new(),
                closing_order: VecDeque::new(),
                closing_bytes: 0,
                acks_due: VecDeque::new(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_holds_one_sum_per_second_of_its_window() {
        let mut l = Ledger::default();
        // 10,000 requests a second for 20 s, with a window of 5 s.
        for i in 0..200_000u64 {
            l.earned(Time(i / 10), Amount(2), 5_000);
        }
        l.lost(Time(19_999), Amount(7), 5_000);
        assert_eq!(
            l.earnings.len(),
            5,
            "the buckets from 15 s (the window's start, 14.999 s, rounds up)"
        );
        let earned = Amount::checked_sum(l.earnings.iter().map(|(_, a)| *a)).unwrap();
        // 15 s to 19.999 s, 10 requests per ms.
        assert_eq!(earned, Amount(5_000 * 10 * 2));
        assert_eq!(
            l.losses
                .iter()
                .map(|(t, a)| (t.ms(), a.0))
                .collect::<Vec<_>>(),
            [(19_000, 7)]
        );
        l.prune(Time(30_000));
        assert!(l.earnings.is_empty() && l.losses.is_empty());
    }
}

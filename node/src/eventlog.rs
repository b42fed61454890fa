//! A node's recent engine events, kept when asked for (`event_log` in the settings)
//! and read through the control endpoint's `events`: the real timeline `por devnet
//! run` sets beside the simulator's. Bounded: the oldest go first.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use por_protocol::engine::Described;
use por_protocol::Time;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::sdk::NodeEvent;

/// One kept event.
#[derive(Clone, Debug)]
pub struct Logged {
    /// Its place in the log, from 0.
    pub seq: u64,
    /// When the node saw it.
    pub at: Time,
    /// What it was.
    pub event: Described,
}

impl Logged {
    /// As JSON: ids in hex (node keys) or as printed (requests), amounts as decimal
    /// strings.
    pub fn to_json(&self) -> Value {
        let d = &self.event;
        json!({
            "seq": self.seq, "at_ms": self.at.ms(), "kind": d.kind,
            "peer": d.peer.map(|p| crate::key_hex(&p)),
            "request": d.request.map(|r| r.to_string()),
            "amount": d.amount.map(|a| a.0.to_string()),
            "total": d.total.map(|a| a.0.to_string()),
            "ms": d.ms, "deadline_ms": d.deadline.map(Time::ms), "detail": d.detail,
        })
    }
}

/// The log.
#[derive(Debug)]
pub(crate) struct EventLog {
    capacity: usize,
    next: u64,
    /// Events the node produced faster than the log took them (none in practice).
    missed: u64,
    entries: VecDeque<Logged>,
}

impl EventLog {
    /// The events from `since` on (as many as are still kept), the next sequence
    /// number, and how many were missed or have been dropped for room since `since`.
    pub(crate) fn since(&self, since: u64) -> (Vec<Logged>, u64, u64) {
        let first = self.entries.front().map_or(self.next, |e| e.seq);
        let dropped = first.saturating_sub(since) + self.missed;
        let out = self
            .entries
            .iter()
            .filter(|e| e.seq >= since)
            .cloned()
            .collect();
        (out, self.next, dropped)
    }

    fn push(&mut self, at: Time, event: Described) {
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back(Logged {
            seq: self.next,
            at,
            event,
        });
        self.next += 1;
    }
}

/// Starts keeping the last `capacity` of `events`.
pub(crate) fn spawn(
    capacity: usize,
    mut events: broadcast::Receiver<NodeEvent>,
) -> Arc<Mutex<EventLog>> {
    let log = Arc::new(Mutex::new(EventLog {
        capacity: capacity.max(1),
        next: 0,
        missed: 0,
        entries: VecDeque::new(),
    }));
    let keep = log.clone();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(ev) => {
                    if let Some(d) = ev.event.describe() {
                        if let Ok(mut l) = keep.lock() {
                            l.push(ev.at, d);
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    if let Ok(mut l) = keep.lock() {
                        l.missed += n;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    log
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_and_counts_what_it_dropped() {
        let mut l = EventLog {
            capacity: 2,
            next: 0,
            missed: 0,
            entries: VecDeque::new(),
        };
        for t in 0..3 {
            l.push(
                Time(t),
                Described {
                    kind: "peer_silent",
                    ..Described::default()
                },
            );
        }
        let (events, next, dropped) = l.since(0);
        assert_eq!(next, 3);
        assert_eq!(dropped, 1);
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        let (events, _, dropped) = l.since(2);
        assert_eq!((events.len(), dropped), (1, 0));
        assert_eq!(events[0].to_json()["kind"], "peer_silent");
    }
}

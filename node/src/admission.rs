//! Admission by delay: a node that cannot keep up refuses new requests, instead of
//! taking on a backlog that outlives every deadline it is paid for.
//!
//! The signal is how long work waits in the node's three queues:
//! - frames and the caller's requests waiting for the engine (one queue);
//! - the engine's writes waiting to become durable (the group commit's queue and its
//!   sync): everything that commits the node to anything leaves only then;
//! - frames waiting for their connection, on each lane of each peer (a queue each;
//!   the slowest counts, `Links::take_out_delay` says why).
//!
//! The last is where an overloaded path's backlog stands on this host: in the soak
//! bench, once a transient pushed the path past its knee, tens of thousands of frames
//! queued for the peers while the engines and commits kept up (docs/benchmarks.md,
//! "Shedding by delay").
//!
//! As in CoDel, only a standing delay counts, not a burst. In each window (twice the
//! target) a queue's delay is the least any of its items waited (a commit still
//! waiting counts its age if none finished); the node sheds once the longest of these
//! passes the target, and takes new requests again after the first window in which
//! it does not. While shedding, the engine refuses new requests
//! ([`por_protocol::Engine::set_overloaded`]); those it took are served as always.

use std::collections::VecDeque;

/// The admission controller of one node: the write batches in the persister's hands,
/// and what the current window has seen of the three queues' delays. Time is in ms,
/// passed in.
#[derive(Debug)]
pub(crate) struct Admission {
    /// The standing delay past which the node sheds (0: never).
    target_ms: u64,
    /// Batches handed to the persister and not yet durable: (last write number, when
    /// handed over).
    waiting: VecDeque<(u64, u64)>,
    /// When the current window ends.
    window_end: u64,
    /// The least delay of a commit that finished in the current window.
    least: Option<u64>,
    /// The least time a frame or a caller's request that reached the engine in the
    /// current window waited for it.
    least_in: Option<u64>,
    /// The least delay frames waiting for their connections reported in the current
    /// window.
    out: Option<u64>,
    /// The standing delay measured, while shedding.
    shedding: Option<u64>,
}

impl Admission {
    /// A controller with a `target_ms` standing delay (0 turns it off), its first
    /// window starting at `now_ms`.
    pub(crate) fn new(target_ms: u64, now_ms: u64) -> Admission {
        Admission {
            target_ms,
            waiting: VecDeque::new(),
            window_end: now_ms.saturating_add(target_ms.saturating_mul(2)),
            least: None,
            least_in: None,
            out: None,
            shedding: None,
        }
    }

    /// Frames queued for peers waited `delay_ms` (since the last report, on the
    /// slowest lane: `Links::take_out_delay`).
    pub(crate) fn written(&mut self, delay_ms: u64) {
        least_of(&mut self.out, delay_ms);
    }

    /// A frame (or a request of the node's own caller) waited `delay_ms` between its
    /// connection (or the call) and the engine.
    pub(crate) fn arrived(&mut self, delay_ms: u64) {
        least_of(&mut self.least_in, delay_ms);
    }

    /// The writes up to `up_to` were handed to the persister at `now_ms`.
    pub(crate) fn handed(&mut self, up_to: u64, now_ms: u64) {
        if self.target_ms > 0 {
            self.waiting.push_back((up_to, now_ms));
        }
    }

    /// The writes up to `up_to` are durable at `now_ms`.
    pub(crate) fn durable(&mut self, up_to: u64, now_ms: u64) {
        while let Some(&(last, at)) = self.waiting.front() {
            if last > up_to {
                break;
            }
            self.waiting.pop_front();
            least_of(&mut self.least, now_ms.saturating_sub(at));
        }
    }

    /// When [`Admission::tick`] has a window to close: only while something is
    /// waiting or the node sheds (an idle node has nothing to measure).
    pub(crate) fn next_tick(&self) -> Option<u64> {
        (self.target_ms > 0
            && (!self.waiting.is_empty() || self.least_in.is_some() || self.shedding.is_some()))
        .then_some(self.window_end)
    }

    /// Closes the window if it has ended by `now_ms`. Returns the new verdict when it
    /// changes: `Some(Some(delay))` to start shedding, `Some(None)` to stop.
    pub(crate) fn tick(&mut self, now_ms: u64) -> Option<Option<u64>> {
        if self.target_ms == 0 || now_ms < self.window_end {
            return None;
        }
        let oldest = self
            .waiting
            .front()
            .map(|&(_, at)| now_ms.saturating_sub(at));
        // Commits that finished say what the delay was; with none, the oldest batch
        // still waiting says it is at least its age; with nothing at all, it is nil.
        let commits = self.least.or(oldest).unwrap_or(0);
        // Each queue stands on its own: the longest standing delay of the three is
        // what new work meets.
        let standing = commits
            .max(self.least_in.unwrap_or(0))
            .max(self.out.unwrap_or(0));
        self.least = None;
        self.least_in = None;
        self.out = None;
        self.window_end = now_ms.saturating_add(self.target_ms.saturating_mul(2));
        let verdict = (standing > self.target_ms).then_some(standing);
        if verdict.is_some() == self.shedding.is_some() {
            // Still shedding: the delay reported is kept up to date, silently.
            if verdict.is_some() {
                self.shedding = verdict;
            }
            return None;
        }
        self.shedding = verdict;
        Some(verdict)
    }

    /// The standing delay measured, while shedding.
    pub(crate) fn shedding(&self) -> Option<u64> {
        self.shedding
    }
}

/// Lowers `slot` to `delay_ms` (sets it if empty): a window's least wait.
fn least_of(slot: &mut Option<u64>, delay_ms: u64) {
    *slot = Some(slot.map_or(delay_ms, |l| l.min(delay_ms)));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Commits handed over every `every` ms from `from` until `to`, each durable
    /// `delay` ms later; ticks every ms. Returns the verdicts with when they came.
    fn run(
        a: &mut Admission,
        from: u64,
        to: u64,
        every: u64,
        delay: u64,
        seq: &mut u64,
    ) -> Vec<(u64, Option<u64>)> {
        let mut out = Vec::new();
        let mut due: VecDeque<(u64, u64)> = VecDeque::new();
        for t in from..to {
            if (t - from).is_multiple_of(every) {
                *seq += 1;
                a.handed(*seq, t);
                due.push_back((t + delay, *seq));
            }
            while due.front().is_some_and(|&(at, _)| at <= t) {
                let (_, s) = due.pop_front().unwrap();
                a.durable(s, t);
            }
            if let Some(v) = a.tick(t) {
                out.push((t, v));
            }
        }
        out
    }

    #[test]
    fn a_standing_delay_sheds_within_two_windows_and_a_drained_one_stops() {
        let mut a = Admission::new(100, 0);
        let mut seq = 0;
        // Quick commits: never sheds.
        assert!(run(&mut a, 0, 1_000, 5, 3, &mut seq).is_empty());
        // Every commit waits 300 ms: sheds at the end of the first whole window in
        // which commits all waited so long.
        let shed = run(&mut a, 1_000, 2_000, 5, 300, &mut seq);
        assert_eq!(shed.len(), 1, "{shed:?}");
        let (at, v) = shed[0];
        assert!((1_200..=1_600).contains(&at), "shed at {at}");
        assert!(v.is_some_and(|d| d > 100));
        assert!(a.shedding().is_some());
        // Quick again: stops after the first window whose quickest commit was quick.
        let back = run(&mut a, 2_000, 3_000, 5, 3, &mut seq);
        assert_eq!(back.len(), 1, "{back:?}");
        assert_eq!(back[0].1, None);
        assert!(back[0].0 <= 2_700, "stopped at {}", back[0].0);
        assert_eq!(a.shedding(), None);
    }

    #[test]
    fn a_burst_shorter_than_a_window_never_sheds() {
        let mut a = Admission::new(100, 0);
        let mut seq = 0;
        // 150 ms of slow commits amid quick ones: every window keeps a quick one.
        let mut verdicts = run(&mut a, 0, 500, 5, 3, &mut seq);
        verdicts.extend(run(&mut a, 500, 650, 5, 250, &mut seq));
        verdicts.extend(run(&mut a, 650, 2_000, 5, 3, &mut seq));
        assert!(verdicts.is_empty(), "{verdicts:?}");
    }

    #[test]
    fn a_commit_stuck_with_none_finishing_sheds_by_its_age() {
        let mut a = Admission::new(100, 0);
        a.handed(1, 10);
        // Nothing finishes: at the window's end (200) the batch is 190 ms old.
        assert_eq!(a.next_tick(), Some(200));
        assert_eq!(a.tick(199), None);
        assert_eq!(a.tick(200), Some(Some(190)));
        a.durable(1, 450);
        // Its 440 ms counts in the window it finished in; the next one is idle.
        assert_eq!(a.tick(600), None);
        assert_eq!(a.shedding(), Some(440));
        assert_eq!(a.tick(800), Some(None));
        assert_eq!(a.next_tick(), None, "idle: nothing to measure");
    }

    #[test]
    fn the_longest_standing_queue_decides_and_a_quiet_one_does_not_hide_it() {
        let mut a = Admission::new(100, 0);
        // Commits are quick and the engine keeps up, but frames wait 300 ms for a
        // peer's connection: the node sheds, saying so.
        a.handed(1, 10);
        a.durable(1, 12);
        a.arrived(1);
        a.written(300);
        a.written(320);
        assert_eq!(a.tick(200), Some(Some(300)));
        // The lanes drain; the next window sheds no more.
        a.handed(2, 210);
        a.durable(2, 212);
        a.written(4);
        assert_eq!(a.tick(400), Some(None));
        // Frames waiting for the engine alone make it shed too.
        a.handed(3, 410);
        a.durable(3, 411);
        a.arrived(150);
        a.arrived(180);
        assert_eq!(a.tick(600), Some(Some(150)));
    }

    #[test]
    fn a_target_of_zero_never_sheds() {
        let mut a = Admission::new(0, 0);
        a.handed(1, 0);
        a.arrived(5_000);
        a.written(5_000);
        assert_eq!(a.next_tick(), None);
        assert_eq!(a.tick(10_000), None);
        assert_eq!(a.shedding(), None);
    }
}

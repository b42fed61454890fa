//! Virtual time. The engine never reads a clock: every call takes `now`.

use serde::{Deserialize, Serialize};

/// A point in time, in milliseconds since an epoch chosen by the driver.
///
/// The simulator starts at zero; the node uses milliseconds since the Unix epoch so
/// that both peers of an edge agree on sync instants (see `docs/protocol.md`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Time(pub u64);

impl Time {
    /// Zero, the simulator's start.
    pub const ZERO: Time = Time(0);
    /// The farthest representable instant, used as "never".
    pub const NEVER: Time = Time(u64::MAX);

    /// Milliseconds since the epoch.
    pub fn ms(self) -> u64 {
        self.0
    }

    /// `self + ms`, saturating at [`Time::NEVER`].
    #[must_use]
    pub fn plus(self, ms: u64) -> Time {
        Time(self.0.saturating_add(ms))
    }

    /// `self - ms`, saturating at zero.
    #[must_use]
    pub fn minus(self, ms: u64) -> Time {
        Time(self.0.saturating_sub(ms))
    }

    /// Milliseconds from `earlier` to `self`, or zero if `earlier` is later.
    pub fn since(self, earlier: Time) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl std::fmt::Display for Time {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

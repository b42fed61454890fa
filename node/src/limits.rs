//! The node's own bounds on what peers and HTTP clients can make it hold; the
//! engine's are in [`por_protocol::EngineConfig`]. docs/limits.md lists every bound
//! of the node with its setting and default.

use por_protocol::wire::MAX_FRAME_LEN;
use por_protocol::EngineConfig;

use crate::http::HttpLimits;
use crate::NodeError;

/// Frames a queue must hold beyond the kept closings: those answered while the
/// reconnection's resend is under way.
const SLACK_FRAMES: usize = 8;

/// The default standing queueing delay past which a node sheds load: long enough that
/// no healthy node, even a debug build on a busy host, waits so long through a whole
/// window, and short against the round trips a backlog leads to (seconds).
pub const DEFAULT_ADMISSION_DELAY_MS: u64 = 200;

/// Bounds of one node process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of frames queued for one peer and not yet taken by the transport; a peer
    /// that lets more pile up is too slow and is dropped (the engine retransmits what
    /// matters when it reconnects).
    pub queued_bytes_per_peer: usize,
    /// Transport lanes (streams) per peer that large responses spread over, each
    /// with its own writer; the control lane comes on top. More let more large
    /// responses progress side by side; each is a QUIC stream (or a TCP lane with a
    /// half-sent frame) a peer must be able to hold.
    pub bulk_lanes: u32,
    /// Each HTTP surface (control endpoint, metrics listener).
    pub http: HttpLimits,
    /// The standing delay of the node's queues (engine inputs, commits, lanes to
    /// peers), in ms, past which it sheds load:
    /// refuses new requests (a peer's refunded as `Overloaded`) until it drains (see
    /// `admission.rs`). 0 never sheds.
    pub admission_delay_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            queued_bytes_per_peer: 64 << 20,
            bulk_lanes: 4,
            http: HttpLimits::default(),
            admission_delay_ms: DEFAULT_ADMISSION_DELAY_MS,
        }
    }
}

impl Limits {
    /// Refuses bounds that cannot work with `engine`: on reconnection a node resends
    /// every kept closing the peer awaits at once, so a queue smaller than the kept
    /// closings plus a few frames would drop an honest peer on every reconnection.
    pub fn check(&self, engine: &EngineConfig) -> Result<(), NodeError> {
        let need = usize::try_from(engine.closing_retention_bytes)
            .unwrap_or(usize::MAX)
            .saturating_add(SLACK_FRAMES * MAX_FRAME_LEN);
        if self.queued_bytes_per_peer < need {
            return Err(NodeError::Config {
                source_name: "settings".into(),
                key: "max_queued_bytes_per_peer".into(),
                detail: format!(
                    "{} bytes cannot hold what a reconnection resends ({} bytes of kept \
                     closings and {SLACK_FRAMES} frames): at least {need}",
                    self.queued_bytes_per_peer, engine.closing_retention_bytes
                ),
            });
        }
        let most = por_transport::MAX_STREAMS.saturating_sub(1);
        if !(1..=most).contains(&self.bulk_lanes) {
            return Err(NodeError::Config {
                source_name: "settings".into(),
                key: "bulk_lanes".into(),
                detail: format!("{} is out of range: 1 to {most}", self.bulk_lanes),
            });
        }
        if self.http.max_connections == 0 {
            return Err(NodeError::Config {
                source_name: "settings".into(),
                key: "http_max_connections".into(),
                detail: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_hold_and_a_queue_smaller_than_the_kept_closings_is_refused() {
        let engine = EngineConfig::default();
        assert!(Limits::default().check(&engine).is_ok());
        let small = Limits {
            queued_bytes_per_peer: 4 << 20,
            ..Limits::default()
        };
        let err = small.check(&engine).unwrap_err().to_string();
        assert!(err.contains("max_queued_bytes_per_peer"), "{err}");
        for lanes in [0, por_transport::MAX_STREAMS] {
            let bad = Limits {
                bulk_lanes: lanes,
                ..Limits::default()
            };
            let err = bad.check(&engine).unwrap_err().to_string();
            assert!(err.contains("bulk_lanes"), "{err}");
        }
    }
}

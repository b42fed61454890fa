//! Closes on chain, as this node's watchtower sees them.
//!
//! A channel whose close began on chain (cooperative or adversarial) has left the
//! topology: it stops carrying requests and payments at once, and the requests routed
//! over it are answered with a proof of severance signed by us, exactly as for an edge
//! we severed (the notice is not submitted: the contract only severs open edges). An
//! adversarial close whose states pay us less than the latest update the peer signed
//! to us is challenged with that update. A channel paid out on chain is marked
//! closed for good, so that no restart or stale snapshot brings it back.

use crate::channel::CloseStage;
use crate::store::Write;
use crate::time::Time;
use crate::types::{ChannelId, SeverReason};
use crate::Amount;

use super::{ChainAction, Engine, Event};

impl Engine {
    /// `close_proposed`, `close_started` or `close_challenged` for `channel`, with the
    /// totals the contract now holds per direction.
    pub(super) fn on_close_on_chain(
        &mut self,
        channel: ChannelId,
        adversarial: bool,
        paid_ab: Amount,
        paid_ba: Amount,
        now: Time,
    ) {
        let Some(ch) = self.channels.get(&channel) else {
            return;
        };
        if ch.rec.close == CloseStage::Closed {
            return;
        }
        let peer = ch.rec.peer;
        // What the contract holds as paid to us, and the best state we hold of it.
        let held = if ch.rec.edge.a == self.id {
            paid_ba
        } else {
            paid_ab
        };
        let ours = ch
            .rec
            .incoming
            .latest
            .clone()
            .filter(|u| adversarial && u.update.cumulative > held);
        let challenged = ours.is_some();
        if adversarial {
            self.advance_close(channel, CloseStage::Closing);
        }
        if let Some(update) = ours {
            self.chain_actions.push_back(ChainAction::Challenge {
                channel,
                updates: vec![update],
            });
        }
        self.retire(channel, now);
        self.events.push_back(Event::CloseSeen {
            channel,
            peer,
            adversarial,
            challenged,
        });
    }

    /// `channel_closed`: the channel was paid out.
    pub(super) fn on_channel_closed(&mut self, channel: ChannelId, now: Time) {
        let Some(peer) = self.channels.get(&channel).map(|ch| ch.rec.peer) else {
            return;
        };
        if !self.advance_close(channel, CloseStage::Closed) {
            return;
        }
        self.retire(channel, now);
        self.events
            .push_back(Event::ChannelClosed { channel, peer });
    }

    /// Moves `channel`'s close stage forward to `stage`, durably; returns whether it
    /// moved (a stage never goes back).
    fn advance_close(&mut self, channel: ChannelId, stage: CloseStage) -> bool {
        let Some(ch) = self.channels.get_mut(&channel) else {
            return false;
        };
        if ch.rec.close >= stage {
            return false;
        }
        ch.rec.close = stage;
        self.write(Write::Close { channel, stage });
        true
    }

    /// Takes a channel that left the topology on chain out of service: severed here
    /// (out of our topology), with a notice that answers what was routed over it, and
    /// not submitted. Nothing to do if it was severed already.
    fn retire(&mut self, channel: ChannelId, now: Time) {
        // Signing our own notice for one of our channels cannot fail but for an
        // encoding error.
        let _ = self.sever_signed(channel, SeverReason::Closing, now, None, false);
    }
}

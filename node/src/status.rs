//! The node's status as `por status` and [`crate::NodeHandle::status`] report it:
//! every channel's balances, connection and severance, and what is in flight.

use por_protocol::{Amount, Engine};

use crate::links::Links;
use crate::sdk::{ChannelStatus, Status};

/// The status of the node whose engine and links these are.
pub(crate) fn status(engine: &Engine, links: &Links, address: &str) -> Status {
    let channels = engine
        .channels()
        .map(|c| ChannelStatus {
            id: c.id(),
            peer: c.peer,
            balance: c.balance().unwrap_or_default(),
            received: c.incoming.cumulative,
            paid: c.outgoing.cumulative,
            unacked: c
                .outgoing
                .unacked
                .first_key_value()
                .map_or(Amount::ZERO, |(_, (u, _))| {
                    c.outgoing
                        .cumulative
                        .checked_sub(
                            u.cumulative
                                .checked_sub(u.memo.amount())
                                .unwrap_or_default(),
                        )
                        .unwrap_or_default()
                }),
            connected: links.is_connected(&c.peer),
            severed: c.severed.is_some(),
            close: c.close,
        })
        .collect();
    Status {
        id: engine.id(),
        address: address.to_string(),
        channels,
        in_flight: engine.in_flight(),
        transmits_waiting: engine.transmits_waiting(),
    }
}

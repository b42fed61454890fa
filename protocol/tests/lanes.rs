//! Lanes: a large response travels on the bulk lane, which other frames may overtake.
//! The engine must be indifferent to that: here every bulk frame is held back on the
//! wire while the control lane runs on (syncs, late fees, acks), and the money must
//! still come out exactly as on one ordered lane: every fee paid is a fee received,
//! both ends of each channel agree, nobody records a loss or severs.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;

use por_protocol::messages::{Lane, Message, BULK_BODY};
use por_protocol::testing::Network;
use por_protocol::types::{ChannelId, EdgeInfo, EdgeTerms, Route};
use por_protocol::{Amount, Event, Keypair, NodeId, Time};

/// How long the wire holds a bulk frame back (30 ms beyond the edges' 10 ms, within
/// the engine's fee tolerance). Responses are sent 10 ms before a sync of their edge
/// (see `run`), so that sync arrives first.
const BULK_DELAY_MS: u64 = 40;
const RATE: Amount = Amount(2);

fn edge(id: u64, a: NodeId, b: NodeId, phase: u64) -> EdgeInfo {
    EdgeInfo {
        id: ChannelId(id),
        a,
        b,
        terms: EdgeTerms {
            latency_ms: 10,
            base_cost: Amount(100),
            byte_cost: Amount(1),
            sync_interval_ms: 200,
            sync_phase_ms: phase,
            max_late_fee_rate: Amount(10),
            bandwidth: EdgeTerms::DEFAULT_BANDWIDTH,
        },
        deposit_a: Amount(1_000_000_000),
        deposit_b: Amount(1_000_000_000),
    }
}

/// What the two-lane wire saw.
#[derive(Default)]
struct Wire {
    /// Bulk frames in flight: (due, from, to, message).
    held: VecDeque<(u64, usize, usize, Message)>,
    /// Control frames delivered between two nodes while a bulk frame between them
    /// was held (each one overtook it).
    overtaken_by: Vec<&'static str>,
    /// Every message the server sent, in order, with its lane.
    server_sent: Vec<(&'static str, Lane)>,
    /// Every event of every node.
    events: Vec<(usize, Event)>,
}

/// Client 0 -- relay 1 -- server 2. The server answers `late_ms` after its deadline
/// (at the latest, see below) with `body`; the wire runs for `until` ms of virtual time, one ms per step.
fn run(body: Vec<u8>, late_ms: u64, until: u64) -> (Network, Wire) {
    let keys = [1u8, 2, 3].map(|i| Keypair::from_seed([i; 32]));
    let ids = keys.clone().map(|k| k.id());
    let edges = vec![edge(1, ids[0], ids[1], 50), edge(2, ids[1], ids[2], 0)];
    let mut net = Network::with_keys(&keys, edges, Time::ZERO);
    let route = Route {
        nodes: ids.to_vec(),
        channels: vec![ChannelId(1), ChannelId(2)],
    };
    let id = net.nodes[0]
        .engine
        .send_request(route, vec![7], body.len() as u64, RATE, Time(0))
        .unwrap();
    let mut wire = Wire::default();
    let mut answer_at = None;
    let mut body = Some(body);
    for now in 0..until {
        let t = Time(now);
        for i in 0..3 {
            net.engine(i).handle_timeout(t);
        }
        // Bulk frames that are due arrive first, then control runs until quiet.
        while wire.held.front().is_some_and(|(due, ..)| *due <= now) {
            let (_, from, to, m) = wire.held.pop_front().unwrap();
            net.deliver(from, to, m, t).unwrap();
        }
        loop {
            let mut moved = false;
            for i in 0..3 {
                for tx in net.nodes[i].flush() {
                    moved = true;
                    let j = net.index(&tx.to).unwrap();
                    let lane = tx.message.lane();
                    if i == 2 {
                        wire.server_sent.push((tx.message.kind(), lane));
                    }
                    if lane == Lane::Bulk {
                        wire.held.push_back((now + BULK_DELAY_MS, i, j, tx.message));
                        continue;
                    }
                    if wire.held.iter().any(|(_, f, t, _)| (*f, *t) == (i, j)) {
                        wire.overtaken_by.push(tx.message.kind());
                    }
                    let m = format!("{:?}", tx.message)
                        .chars()
                        .take(200)
                        .collect::<String>();
                    if let Err(e) = net.deliver(i, j, tx.message, t) {
                        panic!("{now} {i}->{j} {m}: {e:?} {:?}", wire.events);
                    }
                }
            }
            if !moved {
                break;
            }
        }
        for i in 0..3 {
            for e in net.events(i) {
                if let Event::RequestReceived { send_deadline, .. } = &e {
                    let mut at = (send_deadline.0 + late_ms).max(now);
                    // 10 ms before the server's next sync with the relay (phase 0);
                    // the relay forwards at 30 mod 200, 20 ms before its sync with
                    // the client (phase 50).
                    while late_ms > 0 && at % 200 != 190 {
                        at += 1;
                    }
                    answer_at = Some(at);
                }
                wire.events.push((i, e));
            }
        }
        // The server answers (its frames go out in the next step).
        if answer_at == Some(now) {
            if let Some(b) = body.take() {
                net.nodes[2].engine.respond(id, b, t).unwrap();
            }
        }
    }
    (net, wire)
}

/// The last running total of late fees node `i` paid (or received) to (from) `peer`.
fn fee_total(wire: &Wire, i: usize, peer: NodeId, paid: bool) -> Amount {
    wire.events
        .iter()
        .filter(|(n, _)| *n == i)
        .filter_map(|(_, e)| match e {
            Event::LateFeePaid { peer: p, total, .. } if paid && *p == peer => Some(*total),
            Event::LateFeeReceived { peer: p, total, .. } if !paid && *p == peer => Some(*total),
            _ => None,
        })
        .next_back()
        .unwrap_or(Amount::ZERO)
}

/// Both ends of every channel agree on what each has paid the other.
fn assert_channels_agree(net: &Network) {
    for (ch, a, b) in [(1, 0, 1), (2, 1, 2)] {
        let (x, y) = (
            net.channel(a, ChannelId(ch)).unwrap(),
            net.channel(b, ChannelId(ch)).unwrap(),
        );
        assert_eq!(x.outgoing.cumulative, y.incoming.cumulative, "channel {ch}");
        assert_eq!(y.outgoing.cumulative, x.incoming.cumulative, "channel {ch}");
        assert!(x.outgoing.unacked.is_empty() && y.outgoing.unacked.is_empty());
    }
}

#[test]
fn a_late_large_response_overtaken_on_the_wire_settles_exactly() {
    let body: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (net, wire) = run(body.clone(), 150, 2_000);
    // The server paid its final fee on the control lane, then sent the body on bulk.
    let tail: Vec<_> = wire.server_sent.iter().rev().take(8).collect();
    let response_at = wire
        .server_sent
        .iter()
        .position(|(k, _)| *k == "response")
        .unwrap();
    assert_eq!(wire.server_sent[response_at].1, Lane::Bulk, "{tail:?}");
    assert_eq!(
        wire.server_sent[response_at - 1],
        ("late_fee", Lane::Control),
        "the final fee goes just ahead of the body: {tail:?}"
    );
    assert!(
        wire.overtaken_by.contains(&"sync"),
        "a sync overtook a held response: {:?} {:?}",
        wire.overtaken_by,
        wire.server_sent
    );
    let delivered: Vec<_> = wire
        .events
        .iter()
        .filter_map(|(n, e)| match e {
            Event::ResponseDelivered {
                body: b, on_time, ..
            } if *n == 0 => Some((b, *on_time)),
            _ => None,
        })
        .collect();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].0, &body, "the body arrived intact");
    assert!(!delivered[0].1, "it was late");
    for (n, e) in &wire.events {
        assert!(
            !matches!(e, Event::LossRecorded { .. } | Event::SeverInitiated { .. }),
            "node {n}: {e:?}"
        );
    }
    let (client, relay, server) = (net.id(0), net.id(1), net.id(2));
    let server_paid = fee_total(&wire, 2, relay, true);
    assert!(server_paid >= Amount(190 * RATE.0), "{server_paid:?}");
    assert_eq!(server_paid, fee_total(&wire, 1, server, false));
    let relay_paid = fee_total(&wire, 1, client, true);
    assert!(
        relay_paid > server_paid,
        "the relay pays from its own deadline"
    );
    assert_eq!(relay_paid, fee_total(&wire, 0, relay, false));
    assert_channels_agree(&net);
}

#[test]
fn small_and_on_time_responses_stay_on_the_control_lane() {
    let small = vec![1u8; BULK_BODY - 1];
    let (net, wire) = run(small, 150, 1_500);
    let response = wire
        .server_sent
        .iter()
        .find(|(k, _)| *k == "response")
        .unwrap();
    assert_eq!(
        response.1,
        Lane::Control,
        "a small late response keeps its fee"
    );
    assert!(wire.held.is_empty());
    assert_channels_agree(&net);
    // An on-time large response has no fee to split off: it goes on bulk as it is.
    let (net, wire) = run(vec![2u8; BULK_BODY], 0, 1_000);
    let kinds: Vec<_> = wire.server_sent.iter().map(|(k, _)| *k).collect();
    assert!(!kinds.contains(&"late_fee"), "{kinds:?}");
    assert!(
        wire.server_sent.contains(&("response", Lane::Bulk)),
        "{:?}",
        wire.server_sent
    );
    assert_channels_agree(&net);
}

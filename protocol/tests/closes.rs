//! The watchtower in the engine: closes on chain of a node's own channels.
//!
//! Client A -- relay B -- server C. An adversarial close that holds less than B was
//! paid is challenged with B's latest state, and only then; a channel whose close
//! began carries no more requests, and what was routed over it is answered with a
//! proof; a channel paid out on chain stays closed across a restart, whatever a stale
//! snapshot says.
#![allow(clippy::unwrap_used)]

use por_protocol::channel::CloseStage;
use por_protocol::engine::{ChainAction, Event};
use por_protocol::testing::Network;
use por_protocol::types::{ChannelId, EdgeInfo, EdgeTerms, Route, SeverReason};
use por_protocol::{Amount, ChainEvent, Keypair, NodeId, Time};

const T0: Time = Time(1_000);
/// The response size every request here buys.
const LIMIT: u64 = 64;
/// Cost of A->B->C for a 5-byte body and its response limit: 2 * (100 + 5 + 64).
const COST: u128 = 2 * (100 + 5 + LIMIT as u128);

fn terms(latency_ms: u64) -> EdgeTerms {
    EdgeTerms {
        latency_ms,
        base_cost: Amount(100),
        byte_cost: Amount(1),
        sync_interval_ms: 1000,
        sync_phase_ms: 0,
        max_late_fee_rate: Amount(10),
        bandwidth: EdgeTerms::DEFAULT_BANDWIDTH,
    }
}

fn edges(keys: &[Keypair; 3]) -> Vec<EdgeInfo> {
    vec![
        EdgeInfo {
            id: ChannelId(1),
            a: keys[0].id(),
            b: keys[1].id(),
            terms: terms(10),
            deposit_a: Amount(1_000_000),
            deposit_b: Amount(1_000_000),
        },
        EdgeInfo {
            id: ChannelId(2),
            a: keys[1].id(),
            b: keys[2].id(),
            terms: terms(20),
            deposit_a: Amount(1_000_000),
            deposit_b: Amount(1_000_000),
        },
    ]
}

fn setup() -> (Network, [NodeId; 3], Route) {
    let keys = [1u8, 2, 3].map(|i| Keypair::from_seed([i; 32]));
    let net = Network::with_keys(&keys, edges(&keys), Time::ZERO);
    let ids = keys.map(|k| k.id());
    let route = Route {
        nodes: ids.to_vec(),
        channels: vec![ChannelId(1), ChannelId(2)],
    };
    (net, ids, route)
}

/// A sends a request to C and C answers it.
fn served(net: &mut Network, route: &Route, now: Time) {
    let id = net.nodes[0]
        .engine
        .send_request(route.clone(), b"hello".to_vec(), LIMIT, Amount(5), now)
        .unwrap();
    assert!(net.pump(now).is_empty());
    net.nodes[2]
        .engine
        .respond(id, b"world".to_vec(), now)
        .unwrap();
    assert!(net.pump(now).is_empty());
}

fn challenges(net: &mut Network, i: usize) -> Vec<(ChannelId, Amount)> {
    net.nodes[i]
        .chain_actions()
        .into_iter()
        .filter_map(|a| match a {
            ChainAction::Challenge { channel, updates } => {
                Some((channel, updates[0].update.cumulative))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn an_adversarial_close_holding_less_than_we_were_paid_is_challenged() {
    let (mut net, _, route) = setup();
    served(&mut net, &route, T0);
    served(&mut net, &route, T0.plus(10));
    // B holds A's update paying 2 * COST on channel 1 (A is its `a`).
    assert_eq!(
        net.channel(1, ChannelId(1)).unwrap().incoming.cumulative,
        Amount(2 * COST)
    );
    // A starts an adversarial close with the older state (one request's worth).
    let close = |paid_ab| ChainEvent::CloseOnChain {
        channel: ChannelId(1),
        adversarial: true,
        paid_ab: Amount(paid_ab),
        paid_ba: Amount(0),
    };
    let t = T0.plus(100);
    net.nodes[1].engine.handle_chain_event(close(COST), t);
    net.nodes[1].flush();
    assert_eq!(
        challenges(&mut net, 1),
        vec![(ChannelId(1), Amount(2 * COST))]
    );
    assert_eq!(
        net.channel(1, ChannelId(1)).unwrap().close,
        CloseStage::Closing
    );
    // Once the chain holds B's state, nothing more to challenge.
    net.nodes[1].engine.handle_chain_event(close(2 * COST), t);
    assert!(challenges(&mut net, 1).is_empty());
    // A, the payer, holds nothing of B's to submit: it never challenges.
    net.nodes[0].engine.handle_chain_event(close(0), t);
    assert!(challenges(&mut net, 0).is_empty());
    // A cooperative proposal is never challenged (nothing moves without B's confirm).
    let (mut net, _, route) = setup();
    served(&mut net, &route, T0);
    net.nodes[1].engine.handle_chain_event(
        ChainEvent::CloseOnChain {
            channel: ChannelId(1),
            adversarial: false,
            paid_ab: Amount(0),
            paid_ba: Amount(0),
        },
        t,
    );
    assert!(challenges(&mut net, 1).is_empty());
    assert_eq!(
        net.channel(1, ChannelId(1)).unwrap().close,
        CloseStage::Open
    );
}

#[test]
fn a_closing_channel_carries_nothing_and_what_crossed_it_is_answered_with_a_proof() {
    let (mut net, ids, route) = setup();
    // A request C will not answer.
    let id = net.nodes[0]
        .engine
        .send_request(route.clone(), b"hello".to_vec(), LIMIT, Amount(5), T0)
        .unwrap();
    assert!(net.pump(T0).is_empty());
    net.events(0);
    // C starts closing channel 2 (B--C) on chain.
    let t = T0.plus(20);
    net.nodes[1].engine.handle_chain_event(
        ChainEvent::CloseOnChain {
            channel: ChannelId(2),
            adversarial: true,
            paid_ab: Amount(0),
            paid_ba: Amount(0),
        },
        t,
    );
    assert!(net.pump(t).is_empty());
    // B's notice for the closing edge answered A's request; it was not submitted on
    // chain (the contract only severs open edges).
    let a_events = net.events(0);
    assert!(
        a_events.iter().any(|e| matches!(e,
            Event::SeverProofDelivered { request, channel, severer, .. }
                if *request == id && *channel == ChannelId(2) && *severer == ids[1])),
        "{a_events:?}"
    );
    let b = &net.nodes[1];
    let rec = b.engine.channel(ChannelId(2)).unwrap();
    assert_eq!(rec.close, CloseStage::Closing);
    assert_eq!(
        rec.severed.as_ref().unwrap().notice.reason,
        SeverReason::Closing
    );
    assert!(!net.nodes[1]
        .chain_actions()
        .iter()
        .any(|a| matches!(a, ChainAction::Sever(_))));
    // No route crosses it any more.
    assert!(!net.nodes[1].engine.topology().is_live(ChannelId(2)));
    assert!(net.nodes[0]
        .engine
        .send_request(route, b"again".to_vec(), LIMIT, Amount(5), t)
        .is_err());
}

#[test]
fn a_closed_channel_stays_closed_after_a_restart() {
    let (mut net, ids, route) = setup();
    served(&mut net, &route, T0);
    let t = T0.plus(100);
    net.nodes[1]
        .engine
        .handle_chain_event(ChainEvent::ChannelClosed(ChannelId(2)), t);
    net.nodes[1].flush();
    assert!(net.nodes[1]
        .events()
        .iter()
        .any(|e| matches!(e, Event::ChannelClosed { channel, peer }
            if *channel == ChannelId(2) && *peer == ids[2])));
    // A restart from the store, with a stale snapshot that still lists the edge, and
    // the edge announced again: it stays closed and carries nothing.
    let keys = [1u8, 2, 3].map(|i| Keypair::from_seed([i; 32]));
    let stale = edges(&keys);
    let mut topology = net.topology();
    for e in &stale {
        topology.insert_edge(e.clone());
    }
    net.nodes[1].crash(topology, t.plus(1));
    net.nodes[1]
        .engine
        .handle_chain_event(ChainEvent::EdgeOpened(stale[1].clone()), t.plus(2));
    let rec = net.nodes[1].engine.channel(ChannelId(2)).unwrap();
    assert_eq!(rec.close, CloseStage::Closed);
    assert!(rec.severed.is_some());
    assert!(!net.nodes[1].engine.topology().is_live(ChannelId(2)));
    // What B was paid on the other channel is still there.
    assert_eq!(
        net.channel(1, ChannelId(1)).unwrap().incoming.cumulative,
        Amount(COST)
    );
}

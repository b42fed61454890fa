//! Every resource a peer can drive at the engine is bounded: what it makes us resend on
//! reconnection, the requests it may keep in flight with us, and their bytes. Each
//! test drives one bound past its limit and checks the refusal and what it cost.
#![allow(clippy::unwrap_used)]

use por_protocol::messages::{Message, RejectReason, MAX_AWAITING, MAX_SYNC_PROOFS};
use por_protocol::testing::Network;
use por_protocol::types::{ChannelId, EdgeInfo, EdgeTerms, FeeItem, RequestId, Route, SeverReason};
use por_protocol::{
    wire, Amount, EngineConfig, Event, Keypair, NodeId, ProtocolError, Time, MAX_IN_FLIGHT_PER_PEER,
};
use por_protocol::{ProofForwarding, SeverPolicy};

const T0: Time = Time(1_000);
/// The response every request here buys and gets: a file relay's kind of answer.
const RESPONSE: usize = 256 << 10;

fn edge(id: u64, a: NodeId, b: NodeId) -> EdgeInfo {
    EdgeInfo {
        id: ChannelId(id),
        a,
        b,
        terms: EdgeTerms {
            latency_ms: 10,
            base_cost: Amount(100),
            byte_cost: Amount(1),
            sync_interval_ms: 1000,
            sync_phase_ms: 0,
            max_late_fee_rate: Amount(10),
            bandwidth: EdgeTerms::DEFAULT_BANDWIDTH,
        },
        deposit_a: Amount(1_000_000_000),
        deposit_b: Amount(1_000_000_000),
    }
}

/// Client A -- relay B -- server C, B and C configured by `config`.
fn net(config: EngineConfig) -> (Network, Route) {
    net_of(EngineConfig::default(), config)
}

/// Client A configured by `client`, relay B and server C by `config`.
fn net_of(client: EngineConfig, config: EngineConfig) -> (Network, Route) {
    let keys = [1u8, 2, 3].map(|i| Keypair::from_seed([i; 32]));
    let ids = keys.clone().map(|k| k.id());
    let edges = vec![edge(1, ids[0], ids[1]), edge(2, ids[1], ids[2])];
    let configs = [client, config.clone(), config];
    let net = Network::new(keys.into_iter().zip(configs), edges, Time::ZERO);
    let route = Route {
        nodes: ids.to_vec(),
        channels: vec![ChannelId(1), ChannelId(2)],
    };
    (net, route)
}

/// A request from A, answered by C with [`RESPONSE`] bytes and delivered to A.
fn answered(net: &mut Network, route: &Route, nonce: u8) -> RequestId {
    let id = net.nodes[0]
        .engine
        .send_request(route.clone(), vec![nonce], RESPONSE as u64, Amount(1), T0)
        .unwrap();
    assert!(net.pump(T0).is_empty());
    net.nodes[2]
        .engine
        .respond(id, vec![nonce; RESPONSE], T0)
        .unwrap();
    assert!(net.pump(T0).is_empty());
    let delivered = net
        .events(0)
        .into_iter()
        .any(|e| matches!(e, Event::ResponseDelivered { request, .. } if request == id));
    assert!(delivered, "A has its response");
    id
}

/// B sees A reconnect, and receives A's `Reestablish` naming `awaiting`. Returns B's
/// verdict and the bytes of every frame B then sends to A.
fn reestablish(
    net: &mut Network,
    awaiting: Vec<RequestId>,
    reconnect: bool,
) -> (Result<(), ProtocolError>, usize) {
    let (a, b) = (net.id(0), net.id(1));
    if reconnect {
        net.nodes[1].engine.peer_disconnected(a, T0);
        net.nodes[1].engine.peer_connected(a, T0);
        net.nodes[1].flush();
    }
    let ch = net.channel(0, ChannelId(1)).unwrap().clone();
    let msg = Message::Reestablish {
        channel: ChannelId(1),
        received_seq: ch.incoming.seq,
        sent_seq: ch.outgoing.seq,
        awaiting,
    };
    let verdict = net.nodes[1].engine.handle_message(a, msg, T0);
    let bytes = net.nodes[1]
        .flush()
        .iter()
        .filter(|t| t.to == a)
        .map(|t| wire::encoded_len(&t.message).unwrap())
        .sum();
    let _ = b;
    (verdict, bytes)
}

#[test]
fn an_honest_reestablish_gets_the_kept_response_again_once() {
    let (mut net, route) = net(EngineConfig::default());
    let id = answered(&mut net, &route, 1);
    let (verdict, bytes) = reestablish(&mut net, vec![id], true);
    assert_eq!(verdict, Ok(()));
    assert!(
        (RESPONSE..RESPONSE + 4096).contains(&bytes),
        "the kept response is resent once: {bytes} bytes"
    );
}

/// The amplification a review found: one `Reestablish` frame naming one answered
/// request ~65,000 times made B resend its kept response for each mention (here
/// 19,000 times 256 KiB: 4.6 GiB of frames from one 300 kB frame). A duplicate is now a fatal violation and
/// costs nothing.
#[test]
fn a_reestablish_repeating_one_request_is_refused_and_resends_nothing() {
    let (mut net, route) = net(EngineConfig::default());
    let id = answered(&mut net, &route, 1);
    let awaiting = vec![id; 19_000];
    assert!(wire::encoded_len(&awaiting).unwrap() <= wire::MAX_FRAME_LEN);
    let (verdict, bytes) = reestablish(&mut net, awaiting, true);
    let err = verdict.unwrap_err();
    assert!(
        matches!(err, ProtocolError::DuplicateAwaiting { request, .. } if request == id),
        "{err}"
    );
    assert!(err.is_fatal(), "the peer is dropped");
    assert_eq!(bytes, 0, "nothing resent for a refused reestablish");
    // Dropped and reconnected, A is served as before.
    let (verdict, bytes) = reestablish(&mut net, vec![id], true);
    assert_eq!(verdict, Ok(()));
    assert!(bytes >= RESPONSE);
}

#[test]
fn a_second_reestablish_on_one_connection_is_refused() {
    let (mut net, route) = net(EngineConfig::default());
    let id = answered(&mut net, &route, 1);
    assert_eq!(reestablish(&mut net, vec![id], true).0, Ok(()));
    let (verdict, bytes) = reestablish(&mut net, vec![id], false);
    let err = verdict.unwrap_err();
    assert!(
        matches!(err, ProtocolError::RepeatedReestablish { .. }),
        "{err}"
    );
    assert!(err.is_fatal());
    assert_eq!(bytes, 0);
}

#[test]
fn a_reestablish_awaiting_more_than_max_awaiting_is_refused() {
    let (mut net, route) = net(EngineConfig::default());
    let id = answered(&mut net, &route, 1);
    let mut awaiting: Vec<RequestId> = (0..MAX_AWAITING as u32)
        .map(|i| {
            let mut b = [0xee; 16];
            b[..4].copy_from_slice(&i.to_le_bytes());
            RequestId(b)
        })
        .collect();
    awaiting.push(id);
    let msg = Message::Reestablish {
        channel: ChannelId(1),
        received_seq: 0,
        sent_seq: 0,
        awaiting: awaiting.clone(),
    };
    assert!(
        wire::encoded_len(&msg).unwrap() <= wire::MAX_FRAME_LEN,
        "the list fits one frame: the bound is the engine's"
    );
    let (verdict, bytes) = reestablish(&mut net, awaiting, true);
    let err = verdict.unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::TooManyAwaiting { count, max: MAX_AWAITING, .. } if count == MAX_AWAITING + 1
        ),
        "{err}"
    );
    assert!(err.is_fatal());
    assert_eq!(bytes, 0);
}

/// The soak found it: a client went on sending while its first hop was away (the
/// requests wait for the reconnection), and came back awaiting more than the relay
/// takes from one peer. The relay refused that `Reestablish` as fatal, on every
/// reconnection, so the edge never came back. Now it is taken: the relay serves what
/// it takes and refuses the rest (refunded).
#[test]
fn a_peer_back_with_more_requests_than_we_take_is_served_and_refused_the_rest() {
    let config = EngineConfig {
        max_in_flight_per_peer: 3,
        ..EngineConfig::default()
    };
    let (mut net, route) = net(config);
    let (a, b) = (net.id(0), net.id(1));
    net.nodes[0].engine.peer_disconnected(b, T0);
    net.nodes[1].engine.peer_disconnected(a, T0);
    let ids: Vec<RequestId> = (0..5u8)
        .map(|n| {
            net.nodes[0]
                .engine
                .send_request(route.clone(), vec![n], 8, Amount(1), T0)
                .unwrap()
        })
        .collect();
    assert!(net.pump(T0).is_empty());
    let at_b = net.channel(1, ChannelId(1)).unwrap().incoming.cumulative.0;
    assert_eq!(at_b, 0, "nothing reached B while it was away");
    net.nodes[0].engine.peer_connected(b, T0);
    net.nodes[1].engine.peer_connected(a, T0);
    let errors = net.pump(T0);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors.iter().all(|e| matches!(
            e,
            ProtocolError::RequestRefused {
                reason: RejectReason::Overloaded,
                ..
            }
        )),
        "only the two past B's bound are refused, nothing fatal: {errors:?}"
    );
    assert_eq!(
        rejections(&mut net),
        vec![RejectReason::Overloaded, RejectReason::Overloaded]
    );
    let each = 2 * (100 + 1 + 8);
    assert_eq!(net_paid(&net), 3 * each, "the two refused were refunded");
    for id in &ids[..3] {
        net.nodes[2].engine.respond(*id, vec![0; 8], T0).unwrap();
    }
    assert!(net.pump(T0).is_empty());
    let delivered = net
        .events(0)
        .into_iter()
        .filter(|e| matches!(e, Event::ResponseDelivered { .. }))
        .count();
    assert_eq!(delivered, 3);
}

/// A node keeps no more requests in flight over one channel than it takes from one
/// peer: past it `send_request` refuses at once, and nothing is paid for it.
#[test]
fn a_client_keeps_no_more_in_flight_over_a_channel_than_it_takes_from_a_peer() {
    let client = EngineConfig {
        max_in_flight_per_peer: 2,
        ..EngineConfig::default()
    };
    let (mut net, route) = net_of(client, EngineConfig::default());
    let send = |net: &mut Network, n: u8| {
        net.nodes[0]
            .engine
            .send_request(route.clone(), vec![n], 8, Amount(1), T0)
    };
    let first = send(&mut net, 0).unwrap();
    send(&mut net, 1).unwrap();
    let err = send(&mut net, 2).unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::ChannelBusy {
                count: 2,
                max: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.is_fatal());
    assert!(net.pump(T0).is_empty());
    let each = 2 * (100 + 1 + 8);
    assert_eq!(
        net_paid(&net),
        2 * each,
        "nothing paid for the one not sent"
    );
    net.nodes[2].engine.respond(first, vec![0; 8], T0).unwrap();
    assert!(net.pump(T0).is_empty());
    send(&mut net, 3).unwrap();
    assert!(net.pump(T0).is_empty());
    assert_eq!(net_paid(&net), 3 * each);
}

/// The reason each of A's requests was refused with, in order.
fn rejections(net: &mut Network) -> Vec<RejectReason> {
    net.events(0)
        .into_iter()
        .filter_map(|e| match e {
            Event::RequestRejected { reason, .. } => Some(reason),
            _ => None,
        })
        .collect()
}

/// What A has paid B, net of refunds.
fn net_paid(net: &Network) -> u128 {
    let ch = net.channel(0, ChannelId(1)).unwrap();
    ch.outgoing.cumulative.0 - ch.incoming.cumulative.0
}

#[test]
fn a_peer_past_its_in_flight_count_is_refused_and_refunded_and_served_again_after() {
    let config = EngineConfig {
        max_in_flight_per_peer: 3,
        ..EngineConfig::default()
    };
    let (mut net, route) = net(config);
    let send = |net: &mut Network, n: u8| {
        net.nodes[0]
            .engine
            .send_request(route.clone(), vec![n], 8, Amount(1), T0)
            .unwrap()
    };
    let ids: Vec<RequestId> = (0..4).map(|n| send(&mut net, n)).collect();
    net.pump(T0);
    assert_eq!(rejections(&mut net), vec![RejectReason::Overloaded]);
    let each = 2 * (100 + 1 + 8);
    assert_eq!(net_paid(&net), 3 * each, "the refused request was refunded");
    // One answered: A has room for one more.
    net.nodes[2].engine.respond(ids[0], vec![0; 8], T0).unwrap();
    net.pump(T0);
    send(&mut net, 9);
    net.pump(T0);
    assert!(rejections(&mut net).is_empty());
    assert_eq!(net_paid(&net), 4 * each);
}

#[test]
fn a_peer_past_its_in_flight_bytes_is_refused() {
    let config = EngineConfig {
        max_in_flight_bytes_per_peer: 100_000,
        ..EngineConfig::default()
    };
    let (mut net, route) = net(config);
    for n in 0..3u8 {
        net.nodes[0]
            .engine
            .send_request(route.clone(), vec![n; 40_000], 8, Amount(1), T0)
            .unwrap();
    }
    net.pump(T0);
    assert_eq!(rejections(&mut net), vec![RejectReason::Overloaded]);
    // A small one still fits, and a small one buying a large response does not.
    net.nodes[0]
        .engine
        .send_request(route.clone(), vec![7; 10], 30_000, Amount(1), T0)
        .unwrap();
    net.pump(T0);
    assert_eq!(rejections(&mut net), vec![RejectReason::Overloaded]);
    net.nodes[0]
        .engine
        .send_request(route.clone(), vec![7; 10_000], 8, Amount(1), T0)
        .unwrap();
    net.pump(T0);
    assert!(rejections(&mut net).is_empty());
}

/// A late response pays its fee; if the connection drops before the peer has it,
/// reconnection resends the response once (from the kept closings) and the fee on
/// its own, never the body a second time with the fee.
#[test]
fn a_late_response_lost_on_the_wire_is_resent_once() {
    let (mut net, route) = net(EngineConfig::default());
    let id = net.nodes[0]
        .engine
        .send_request(route.clone(), vec![1], RESPONSE as u64, Amount(1), T0)
        .unwrap();
    assert!(net.pump(T0).is_empty());
    let late = Time(T0.0 + 5_000);
    net.nodes[2]
        .engine
        .respond(id, vec![1; RESPONSE], late)
        .unwrap();
    // C's answer is lost on the wire.
    let lost = net.nodes[2].flush();
    assert!(
        lost.iter().any(|t| t.message.carries_update()),
        "the late response pays a fee"
    );
    let (b, c) = (net.id(1), net.id(2));
    net.nodes[2].engine.peer_disconnected(b, late);
    net.nodes[2].engine.peer_connected(b, late);
    net.nodes[2].flush();
    let ch = net.channel(1, ChannelId(2)).unwrap().clone();
    let msg = Message::Reestablish {
        channel: ChannelId(2),
        received_seq: ch.incoming.seq,
        sent_seq: ch.outgoing.seq,
        awaiting: vec![id],
    };
    net.nodes[2].engine.handle_message(b, msg, late).unwrap();
    let sent: Vec<(String, usize)> = net.nodes[2]
        .flush()
        .iter()
        .map(|t| {
            let kind = format!("{:?}", t.message).chars().take(12).collect();
            (kind, wire::encoded_len(&t.message).unwrap())
        })
        .collect();
    let bytes: usize = sent.iter().map(|(_, n)| n).sum();
    let _ = c;
    assert!(
        (RESPONSE..RESPONSE + 4096).contains(&bytes),
        "the body goes once: {sent:?}"
    );
}

/// The late-fee items of a sync paying every request a peer may have in flight, at the
/// largest totals.
fn largest_fee_items() -> Vec<FeeItem> {
    (0..MAX_IN_FLIGHT_PER_PEER as u64)
        .map(|i| FeeItem {
            request: RequestId([[0xff; 8], i.to_le_bytes()].concat().try_into().unwrap()),
            total: Amount(u128::MAX),
        })
        .collect()
}

/// A sync pays the late fees of every late request of a peer in one payment, an item
/// each: at the most a peer may have in flight, the items still fit a frame with room
/// for the rest of the message, at the largest totals.
#[test]
fn the_fee_items_of_every_request_a_peer_may_have_fit_one_frame() {
    let len = wire::encoded_len(&largest_fee_items()).unwrap();
    assert!(len <= wire::MAX_FRAME_LEN - (128 << 10), "{len} bytes");
    let config = EngineConfig {
        max_in_flight_per_peer: usize::MAX,
        ..EngineConfig::default()
    };
    assert_eq!(config.per_peer_bound(), MAX_IN_FLIGHT_PER_PEER);
}

/// A sever that ends more requests than one sync may carry, with every relay holding
/// its proofs for the next sync (policy `next_sync`): each sync carries at most
/// `MAX_SYNC_PROOFS` and the rest follow it as proofs of their own, so no frame is
/// larger than a frame may be, and every request still ends at the client with its
/// proof.
#[test]
fn proofs_held_for_a_sync_past_what_one_sync_carries_follow_it_on_their_own() {
    const N: usize = 1_300;
    let keys = [1u8, 2, 3, 4].map(|i| Keypair::from_seed([i; 32]));
    let ids = keys.clone().map(|k| k.id());
    let edges = vec![
        edge(1, ids[0], ids[1]),
        edge(2, ids[1], ids[2]),
        edge(3, ids[2], ids[3]),
    ];
    let holding = EngineConfig {
        proof_forwarding: ProofForwarding::NextSync,
        sever_policy: SeverPolicy::Never,
        heuristic: None,
        ..EngineConfig::default()
    };
    let configs = [
        EngineConfig::default(),
        holding.clone(),
        holding,
        EngineConfig::default(),
    ];
    let mut net = Network::new(keys.into_iter().zip(configs), edges, Time::ZERO);
    let route = Route {
        nodes: ids.to_vec(),
        channels: vec![ChannelId(1), ChannelId(2), ChannelId(3)],
    };
    let mut sent = Vec::new();
    for i in 0..N {
        let id = net.nodes[0]
            .engine
            .send_request(
                route.clone(),
                (i as u32).to_le_bytes().to_vec(),
                64,
                Amount(1),
                T0,
            )
            .unwrap();
        sent.push(id);
    }
    assert!(net.pump(T0).is_empty());
    assert_eq!(net.nodes[2].engine.in_flight(), N, "C holds every request");
    // D never answers and goes offline (nothing to or from it is delivered from here
    // on); C severs its edge to D, which ends all of them with C's proof.
    net.nodes[2]
        .engine
        .sever(ChannelId(3), SeverReason::Operator, T0)
        .unwrap();
    // Every frame on the way back, as (from, kind, proofs in it, encoded bytes).
    let mut frames: Vec<(usize, &'static str, usize, usize)> = Vec::new();
    let mut proofs_bytes = 0;
    let mut now = T0;
    while now < Time(T0.ms() + 3_000) {
        now = Time(now.ms() + 50);
        for i in 0..4 {
            net.engine(i).handle_timeout(now);
        }
        let errors = net.pump_filtered(now, |from, to, m| {
            if from == 3 || to == 3 {
                return false;
            }
            let proofs = match m {
                Message::Sync { proofs, .. } => {
                    proofs_bytes = proofs_bytes.max(wire::encoded_len(proofs).unwrap());
                    proofs.len()
                }
                Message::Proof { .. } => 1,
                _ => 0,
            };
            let len = por_protocol::messages::encode_frame(m).unwrap().len();
            frames.push((from, m.kind(), proofs, len));
            true
        });
        assert!(errors.is_empty(), "{errors:?}");
    }
    let largest = frames.iter().map(|f| f.3).max().unwrap();
    assert!(largest <= wire::MAX_FRAME_LEN, "a frame of {largest} bytes");
    // A sync's most proofs fit beside the late-fee items of every request a peer may
    // have in flight, with room left for the rest of the sync (its signed update).
    let items_bytes = wire::encoded_len(&largest_fee_items()).unwrap();
    assert!(proofs_bytes > 0);
    assert!(
        items_bytes + proofs_bytes <= wire::MAX_FRAME_LEN - (16 << 10),
        "{items_bytes} + {proofs_bytes} bytes"
    );
    for relay in [1, 2] {
        let syncs: Vec<usize> = frames
            .iter()
            .filter(|f| f.0 == relay && f.1 == "sync" && f.2 > 0)
            .map(|f| f.2)
            .collect();
        assert_eq!(
            syncs,
            [MAX_SYNC_PROOFS],
            "relay {relay}'s one sync with proofs"
        );
        let alone = frames
            .iter()
            .filter(|f| f.0 == relay && f.1 == "proof")
            .count();
        assert_eq!(
            alone,
            N - MAX_SYNC_PROOFS,
            "relay {relay}'s proofs after its sync"
        );
    }
    let delivered: std::collections::HashSet<RequestId> = net
        .events(0)
        .into_iter()
        .filter_map(|e| match e {
            Event::SeverProofDelivered {
                request, channel, ..
            } => {
                assert_eq!(channel, ChannelId(3));
                Some(request)
            }
            _ => None,
        })
        .collect();
    assert_eq!(delivered.len(), N, "every request ended with its proof");
    assert!(sent.iter().all(|id| delivered.contains(id)));
    assert_eq!(net.nodes[0].engine.in_flight(), 0);
    assert_eq!(net.nodes[1].engine.in_flight(), 0);
}

#[test]
fn a_relay_shedding_load_refuses_new_requests_refunded_and_serves_those_it_took() {
    let (mut net, route) = net(EngineConfig::default());
    // One request taken by B and C before B starts shedding.
    let taken = net.nodes[0]
        .engine
        .send_request(route.clone(), vec![1], RESPONSE as u64, Amount(1), T0)
        .unwrap();
    assert!(net.pump(T0).is_empty());
    let paid_before = net.nodes[0]
        .engine
        .channel(ChannelId(1))
        .unwrap()
        .outgoing
        .cumulative;
    net.nodes[1].engine.set_overloaded(Some(250));
    // A new one is refused at B as Overloaded and refunded in full: A's channel to B
    // ends where it was, and C never sees it.
    let shed = net.nodes[0]
        .engine
        .send_request(route.clone(), vec![2], RESPONSE as u64, Amount(1), T0)
        .unwrap();
    let errors = net.pump(T0);
    assert!(
        matches!(&errors[..], [ProtocolError::RequestRefused { request, reason: RejectReason::Overloaded, .. }] if *request == shed),
        "{errors:?}"
    );
    let rejected: Vec<_> = net
        .events(0)
        .into_iter()
        .filter_map(|e| match e {
            Event::RequestRejected {
                request,
                reason,
                refunded,
            } => Some((request, reason, refunded)),
            _ => None,
        })
        .collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(
        (rejected[0].0, rejected[0].1),
        (shed, RejectReason::Overloaded)
    );
    assert!(rejected[0].2 > Amount::ZERO);
    let a = net.nodes[0].engine.channel(ChannelId(1)).unwrap();
    let b = net.nodes[1].engine.channel(ChannelId(1)).unwrap();
    assert_eq!(
        a.outgoing
            .cumulative
            .checked_sub(a.incoming.cumulative)
            .unwrap(),
        paid_before,
        "the shed request cost A nothing"
    );
    assert_eq!(b.incoming.cumulative, a.outgoing.cumulative);
    assert!(!net.nodes[2].engine.pending().any(|p| p.id == shed));
    // The request B took before is still served.
    net.nodes[2]
        .engine
        .respond(taken, vec![1; RESPONSE], T0)
        .unwrap();
    assert!(net.pump(T0).is_empty());
    assert!(net
        .events(0)
        .into_iter()
        .any(|e| matches!(e, Event::ResponseDelivered { request, .. } if request == taken)));
    // B's own requests are refused at once, with the delay it reported.
    let back = Route {
        nodes: vec![route.nodes[1], route.nodes[0]],
        channels: vec![ChannelId(1)],
    };
    assert!(matches!(
        net.nodes[1]
            .engine
            .send_request(back, vec![3], 16, Amount(1), T0),
        Err(ProtocolError::Overloaded { delay_ms: 250 })
    ));
    // Drained, B takes requests again.
    net.nodes[1].engine.set_overloaded(None);
    answered(&mut net, &route, 4);
}

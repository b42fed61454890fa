//! Durability before release, and restart from the durable store.
#![allow(clippy::unwrap_used)]

use por_protocol::messages::Message;
use por_protocol::testing::{Network, TestNode};
use por_protocol::types::{ChannelId, EdgeInfo, EdgeTerms, Route, SeverReason};
use por_protocol::{Amount, Engine, EngineConfig, Event, Keypair, Time};

fn setup() -> (Vec<Keypair>, Vec<EdgeInfo>) {
    let keys: Vec<Keypair> = (1u8..=3).map(|i| Keypair::from_seed([i; 32])).collect();
    let terms = EdgeTerms {
        latency_ms: 10,
        base_cost: Amount(100),
        byte_cost: Amount(0),
        sync_interval_ms: 1000,
        sync_phase_ms: 0,
        max_late_fee_rate: Amount(10),
        bandwidth: EdgeTerms::DEFAULT_BANDWIDTH,
    };
    let edge = |id, a: usize, b: usize| EdgeInfo {
        id: ChannelId(id),
        a: keys[a].id(),
        b: keys[b].id(),
        terms: terms.clone(),
        deposit_a: Amount(10_000),
        deposit_b: Amount(10_000),
    };
    let edges = vec![edge(1, 0, 1), edge(2, 1, 2)];
    (keys, edges)
}

fn engine(key: &Keypair, edges: &[EdgeInfo]) -> Engine {
    let mut n = TestNode::new(EngineConfig::default(), key.clone(), Time::ZERO);
    n.open(edges, Time::ZERO);
    n.engine
}

fn route(keys: &[Keypair]) -> Route {
    Route {
        nodes: keys.iter().map(|k| k.id()).collect(),
        channels: vec![ChannelId(1), ChannelId(2)],
    }
}

#[test]
fn nothing_leaves_before_its_writes_are_durable() {
    let (keys, edges) = setup();
    let mut a = engine(&keys[0], &edges);
    let mut b = engine(&keys[1], &edges);
    // Channel-open writes first.
    let open = a.poll_writes().unwrap();
    a.writes_durable(open.up_to);
    let open_b = b.poll_writes().unwrap();
    b.writes_durable(open_b.up_to);

    a.send_request(route(&keys), b"x".to_vec(), 64, Amount(1), Time(5))
        .unwrap();
    assert!(
        a.poll_transmit().is_none(),
        "the signed payment waits for its write"
    );
    let batch = a.poll_writes().unwrap();
    assert!(
        batch.writes.len() >= 2,
        "payment and request state: {:?}",
        batch.writes.len()
    );
    a.writes_durable(batch.up_to);
    let t = a.poll_transmit().unwrap();
    assert!(matches!(t.message, Message::Request(_)));

    b.handle_message(keys[0].id(), t.message, Time(15)).unwrap();
    assert!(
        b.poll_transmit().is_none(),
        "neither the ack nor the forward before the write"
    );
    // A partial confirmation releases only what it covers.
    let batch = b.poll_writes().unwrap();
    b.writes_durable(batch.up_to - 1);
    let released: Vec<_> = std::iter::from_fn(|| b.poll_transmit()).collect();
    b.writes_durable(batch.up_to);
    let rest: Vec<_> = std::iter::from_fn(|| b.poll_transmit()).collect();
    assert_eq!(released.len() + rest.len(), 2, "ack to A and request to C");
    assert!(!rest.is_empty(), "the last write gates at least one frame");
}

#[test]
fn one_ack_covers_every_update_made_durable_by_one_commit() {
    let (keys, edges) = setup();
    let mut a = engine(&keys[0], &edges);
    let mut b = engine(&keys[1], &edges);
    for e in [&mut a, &mut b] {
        let open = e.poll_writes().unwrap();
        e.writes_durable(open.up_to);
    }
    // A sends five requests; B receives all five before its next commit.
    let mut requests = Vec::new();
    for i in 0..5u64 {
        a.send_request(route(&keys), b"x".to_vec(), 64, Amount(1), Time(5 + i))
            .unwrap();
        let w = a.poll_writes().unwrap();
        a.writes_durable(w.up_to);
        requests.extend(std::iter::from_fn(|| a.poll_transmit()));
    }
    assert_eq!(requests.len(), 5);
    for t in requests {
        b.handle_message(keys[0].id(), t.message, Time(20)).unwrap();
    }
    assert!(
        b.poll_transmit().is_none(),
        "no ack before the updates are durable"
    );
    let w = b.poll_writes().unwrap();
    b.writes_durable(w.up_to);
    let out: Vec<_> = std::iter::from_fn(|| b.poll_transmit()).collect();
    let acks: Vec<_> = out
        .iter()
        .filter_map(|t| match &t.message {
            Message::Ack { seq, .. } => Some((t.to, *seq)),
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![(keys[0].id(), 5)], "one ack, of the last update");
    assert_eq!(out.len(), 6, "the ack and five forwarded requests");
    // That one ack acknowledges all five at A.
    for t in out.into_iter().filter(|t| t.to == keys[0].id()) {
        a.handle_message(keys[1].id(), t.message, Time(30)).unwrap();
    }
    let ch = a.channel(ChannelId(1)).unwrap();
    assert_eq!(ch.outgoing.acked_seq, 5);
    assert!(ch.outgoing.unacked.is_empty());
    // Events wait for the writes they report, like frames.
    let w = a.poll_writes().unwrap();
    a.writes_durable(w.up_to);
    let acked = std::iter::from_fn(|| a.poll_event())
        .filter(|e| matches!(e, Event::RequestAcked { .. }))
        .count();
    assert_eq!(acked, 5, "every request is reported acknowledged");
}

#[test]
fn updates_made_together_share_one_signature_and_are_persisted_signed() {
    let (keys, edges) = setup();
    let mut a = engine(&keys[0], &edges);
    let mut b = engine(&keys[1], &edges);
    for e in [&mut a, &mut b] {
        let open = e.poll_writes().unwrap();
        e.writes_durable(open.up_to);
    }
    // Four requests before A's outputs are polled: four cores and four payments, one
    // signature.
    for i in 0..4u64 {
        a.send_request(route(&keys), b"x".to_vec(), 64, Amount(1), Time(5 + i))
            .unwrap();
    }
    let w = a.poll_writes().unwrap();
    let persisted: Vec<_> = w
        .writes
        .iter()
        .filter_map(|w| match w {
            por_protocol::store::Write::Outgoing { update, .. } => Some(update.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(persisted.len(), 4);
    assert!(persisted
        .iter()
        .all(|u| u.is_sealed() && u.sig == persisted[0].sig));
    a.writes_durable(w.up_to);
    let sent: Vec<_> = std::iter::from_fn(|| a.poll_transmit()).collect();
    assert_eq!(sent.len(), 4);
    for (t, stored) in sent.into_iter().zip(&persisted) {
        let Message::Request(r) = &t.message else {
            panic!("{:?}", t.message)
        };
        assert_eq!(&r.payment, &**stored, "what is sent is what was persisted");
        // The client's signature over its request core is the same one signature.
        assert_eq!(r.header.client_sig, persisted[0].sig);
        assert_eq!(
            r.header.client_proof.leaves, 8,
            "four cores and four payments"
        );
        b.handle_message(keys[0].id(), t.message, Time(20)).unwrap();
    }
    assert_eq!(b.channel(ChannelId(1)).unwrap().incoming.seq, 4);
}

/// Three nodes with their stores (the harness's `Network`); B (index 1) can crash and
/// restart from its store at any point.
fn network() -> (Vec<Keypair>, Network) {
    let (keys, edges) = setup();
    let net = Network::with_keys(&keys, edges, Time::ZERO);
    (keys, net)
}

/// A sends a request along the route; once delivered, C (the server) has it.
fn request_at_c(h: &mut Network, keys: &[Keypair]) -> por_protocol::types::RequestId {
    let id = h.nodes[0]
        .engine
        .send_request(route(keys), b"x".to_vec(), 64, Amount(1), Time(1))
        .unwrap();
    pump(h, Time(1), false);
    assert!(std::iter::from_fn(|| h.nodes[2].engine.poll_event())
        .any(|e| matches!(e, Event::RequestReceived { .. })));
    id
}

/// A paid B 200 once and B paid C 100 once, and every payee holds what its payer
/// signed.
fn assert_paid_once(h: &Network) {
    let ch = |i: usize, c: u64| h.nodes[i].engine.channel(ChannelId(c)).unwrap().clone();
    assert_eq!(ch(0, 1).outgoing.cumulative, Amount(200));
    assert_eq!(ch(1, 1).incoming.cumulative, Amount(200));
    assert_eq!(ch(1, 2).outgoing.cumulative, Amount(100));
    assert_eq!(ch(2, 2).incoming.cumulative, Amount(100));
    assert_eq!(ch(1, 2).outgoing.seq, 1, "B did not pay C a second time");
}

/// Delivers until quiet; with `drop_to_b`, every frame to B is lost.
fn pump(net: &mut Network, now: Time, drop_to_b: bool) {
    let _ = net.pump_filtered(now, |_, to, _| !(drop_to_b && to == 1));
}

#[test]
fn relay_restarted_from_its_store_completes_the_request_once() {
    let (keys, mut h) = network();
    let r = route(&keys);
    let id = h.nodes[0]
        .engine
        .send_request(r, b"x".to_vec(), 64, Amount(1), Time(1))
        .unwrap();
    pump(&mut h, Time(1), false);
    // C has the request; B crashes before C's response arrives (it is lost).
    let rid = std::iter::from_fn(|| h.nodes[2].engine.poll_event())
        .find_map(|e| match e {
            Event::RequestReceived { request, .. } => Some(request),
            _ => None,
        })
        .unwrap();
    assert_eq!(rid, id);
    h.nodes[2]
        .engine
        .respond(id, b"y".to_vec(), Time(2))
        .unwrap();
    pump(&mut h, Time(2), true);
    h.crash(1, Time(3));
    pump(&mut h, Time(3), false);
    // C resent its answer on reconnect: A gets the response, exactly once.
    let delivered: Vec<_> = std::iter::from_fn(|| h.nodes[0].engine.poll_event())
        .filter(|e| matches!(e, Event::ResponseDelivered { .. }))
        .collect();
    assert_eq!(delivered.len(), 1);
    assert_paid_once(&h);
    assert!(
        h.nodes[1].engine.pending().next().is_none(),
        "nothing left in flight at B"
    );
}

#[test]
fn lost_payment_is_retransmitted_not_resigned() {
    let (keys, mut h) = network();
    let r = route(&keys);
    h.nodes[0]
        .engine
        .send_request(r, b"x".to_vec(), 64, Amount(1), Time(1))
        .unwrap();
    // A's request never reaches B (connection drops).
    pump(&mut h, Time(1), true);
    assert_eq!(
        h.nodes[1]
            .engine
            .channel(ChannelId(1))
            .unwrap()
            .incoming
            .seq,
        0
    );
    h.crash(1, Time(2));
    pump(&mut h, Time(2), false);
    // The same signed update arrived via reestablish; B forwarded, C got it.
    assert_eq!(
        h.nodes[1]
            .engine
            .channel(ChannelId(1))
            .unwrap()
            .incoming
            .seq,
        1
    );
    assert_eq!(
        h.nodes[0]
            .engine
            .channel(ChannelId(1))
            .unwrap()
            .outgoing
            .seq,
        1
    );
    assert!(std::iter::from_fn(|| h.nodes[2].engine.poll_event())
        .any(|e| matches!(e, Event::RequestReceived { .. })));
}

#[test]
fn server_restarted_before_answering_gets_the_request_again_and_answers_once() {
    let (keys, mut h) = network();
    let r = route(&keys);
    let id = h.nodes[0]
        .engine
        .send_request(r, b"x".to_vec(), 64, Amount(1), Time(1))
        .unwrap();
    pump(&mut h, Time(1), false);
    // C (the server) acknowledged the request, then crashed before answering.
    assert!(std::iter::from_fn(|| h.nodes[2].engine.poll_event())
        .any(|e| matches!(e, Event::RequestReceived { request, .. } if request == id)));
    assert_eq!(h.channel(2, ChannelId(2)).unwrap().incoming.seq, 1);
    h.crash(2, Time(5));
    // Restored from its store, it hands the same request to its handler again.
    let again: Vec<_> = std::iter::from_fn(|| h.nodes[2].engine.poll_event())
        .filter_map(|e| match e {
            Event::RequestReceived { request, body, .. } => Some((request, body)),
            _ => None,
        })
        .collect();
    assert_eq!(again, vec![(id, b"x".to_vec())]);
    h.nodes[2]
        .engine
        .respond(id, b"y".to_vec(), Time(6))
        .unwrap();
    pump(&mut h, Time(6), false);
    let delivered: Vec<_> = std::iter::from_fn(|| h.nodes[0].engine.poll_event())
        .filter_map(|e| match e {
            Event::ResponseDelivered { request, body, .. } => Some((request, body)),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, vec![(id, bytes::Bytes::from_static(b"y"))]);
    // Paid once on each edge; nothing left in flight, and nothing handed over a third time.
    let ch = |i: usize, c: u64| h.nodes[i].engine.channel(ChannelId(c)).unwrap().clone();
    assert_eq!(ch(0, 1).outgoing.cumulative, Amount(200));
    assert_eq!(ch(2, 2).incoming.cumulative, Amount(100));
    assert!(h.nodes[2].engine.pending().next().is_none());
    h.crash(2, Time(7));
    assert!(!std::iter::from_fn(|| h.nodes[2].engine.poll_event())
        .any(|e| matches!(e, Event::RequestReceived { .. })));
}

#[test]
fn responses_kept_for_resending_are_bounded_in_bytes_per_channel() {
    let (keys, mut h) = network();
    // Twenty 1 MB responses for A, all lost on their last edge.
    let mut ids = Vec::new();
    for i in 0..20u64 {
        let id = h.nodes[0]
            .engine
            .send_request(
                route(&keys),
                b"x".to_vec(),
                1_000_000,
                Amount(1),
                Time(1 + i),
            )
            .unwrap();
        ids.push(id);
    }
    pump(&mut h, Time(30), false);
    let got: Vec<_> = std::iter::from_fn(|| h.nodes[2].engine.poll_event())
        .filter_map(|e| match e {
            Event::RequestReceived { request, .. } => Some(request),
            _ => None,
        })
        .collect();
    assert_eq!(got.len(), 20);
    for id in &got {
        h.nodes[2]
            .engine
            .respond(*id, vec![9u8; 1_000_000], Time(31))
            .unwrap();
    }
    let _ = h.pump_filtered(Time(31), |from, to, m| {
        !(from == 1 && to == 0 && matches!(m, Message::Response { .. }))
    });
    // A reconnects to B awaiting all twenty: B resends the newest that fit its 8 MiB.
    let (a, b) = (h.id(0), h.id(1));
    h.nodes[0].engine.peer_disconnected(b, Time(40));
    h.nodes[1].engine.peer_disconnected(a, Time(40));
    h.nodes[0].engine.peer_connected(b, Time(41));
    h.nodes[1].engine.peer_connected(a, Time(41));
    let mut resent = Vec::new();
    let _ = h.pump_filtered(Time(41), |from, to, m| {
        if let (1, 0, Message::Response { request, .. }) = (from, to, m) {
            resent.push(*request);
        }
        true
    });
    assert_eq!(resent.len(), 8, "8 × 1 MB within 8 MiB");
    assert!(
        resent.iter().all(|r| ids[12..].contains(r)),
        "the newest are kept"
    );
}

#[test]
fn a_late_response_keeps_only_its_fee_for_retransmission_and_both_arrive_after_reconnect() {
    let (keys, mut h) = network();
    let id = request_at_c(&mut h, &keys);
    // C answers seconds late: its response pays the final late fee. B never gets it.
    h.nodes[2]
        .engine
        .respond(id, vec![5u8; 64], Time(3_000))
        .unwrap();
    let _ = h.pump_filtered(Time(3_000), |from, to, _| !(from == 2 && to == 1));
    // What C keeps (and persisted) to retransmit its fee is the fee alone.
    let kept = &h.nodes[2].store.channels[&ChannelId(2)].outgoing.unacked;
    assert_eq!(kept.len(), 1);
    let (_, carrier) = kept.values().next().unwrap();
    assert!(
        matches!(carrier, Message::LateFee { .. }),
        "kept {}",
        carrier.kind()
    );
    // B reconnects awaiting it: the fee comes again from C's unacknowledged updates,
    // the response from its kept closings.
    let (b, c) = (h.id(1), h.id(2));
    h.nodes[1].engine.peer_disconnected(c, Time(3_010));
    h.nodes[2].engine.peer_disconnected(b, Time(3_010));
    h.nodes[1].engine.peer_connected(c, Time(3_011));
    h.nodes[2].engine.peer_connected(b, Time(3_011));
    pump(&mut h, Time(3_011), false);
    let delivered = std::iter::from_fn(|| h.nodes[0].engine.poll_event())
        .filter(|e| matches!(e, Event::ResponseDelivered { request, .. } if *request == id))
        .count();
    assert_eq!(delivered, 1);
    let paid = h.nodes[2]
        .engine
        .channel(ChannelId(2))
        .unwrap()
        .outgoing
        .clone();
    let got = h.nodes[1]
        .engine
        .channel(ChannelId(2))
        .unwrap()
        .incoming
        .clone();
    assert_eq!(paid.seq, 1, "one fee update");
    assert_eq!(got.seq, 1);
    assert_eq!(got.cumulative, paid.cumulative, "the fee arrived, once");
    assert!(paid.cumulative > Amount::ZERO);
    assert!(paid.unacked.is_empty(), "and was acknowledged");
}

#[test]
fn a_channel_is_ready_while_connected_and_again_once_reestablished() {
    let (_keys, mut h) = network();
    let (b, c) = (h.id(1), h.id(2));
    assert!(h.nodes[1].engine.channel_ready(ChannelId(2)));
    assert!(!h.nodes[1].engine.channel_ready(ChannelId(99)), "not ours");
    h.nodes[1].engine.peer_disconnected(c, Time(10));
    h.nodes[2].engine.peer_disconnected(b, Time(10));
    assert!(!h.nodes[1].engine.channel_ready(ChannelId(2)));
    assert!(
        h.nodes[1].engine.channel_ready(ChannelId(1)),
        "the other edge"
    );
    h.nodes[1].engine.peer_connected(c, Time(11));
    h.nodes[2].engine.peer_connected(b, Time(11));
    assert!(
        !h.nodes[1].engine.channel_ready(ChannelId(2)),
        "connected, not yet reestablished"
    );
    pump(&mut h, Time(11), false);
    assert!(h.nodes[1].engine.channel_ready(ChannelId(2)));
    h.nodes[1]
        .engine
        .sever(ChannelId(2), SeverReason::Operator, Time(12))
        .unwrap();
    assert!(!h.nodes[1].engine.channel_ready(ChannelId(2)), "severed");
}

/// What B's engine asks to write until it is quiet, folded into its store and
/// reported durable (as the harness's `flush` does), for the test to look at.
fn writes_of_b(h: &mut Network) -> Vec<por_protocol::store::Write> {
    let mut all = Vec::new();
    while let Some(batch) = h.nodes[1].engine.poll_writes() {
        for w in &batch.writes {
            h.nodes[1].store.apply(w).unwrap();
        }
        all.extend(batch.writes);
        h.nodes[1].engine.writes_durable(batch.up_to);
    }
    all
}

#[test]
fn a_sync_paying_many_late_requests_writes_their_fees_once_and_they_survive_a_restart() {
    use por_protocol::store::Write;
    let (keys, mut h) = network();
    // Five: the late fees of two syncs (about 2 s at 1 per ms each) fit B's deposit.
    const N: usize = 5;
    for i in 0..N {
        h.nodes[0]
            .engine
            .send_request(route(&keys), vec![i as u8], 64, Amount(1), Time(1))
            .unwrap();
    }
    pump(&mut h, Time(1), false);
    assert_eq!(h.nodes[1].engine.in_flight(), N);
    // C never answers: at B's sync of its upstream edge every request is late.
    h.nodes[1].engine.handle_timeout(Time(1_000));
    let writes = writes_of_b(&mut h);
    let records = writes
        .iter()
        .filter(|w| matches!(w, Write::Pending(_)))
        .count();
    let paid: Vec<_> = writes
        .iter()
        .filter_map(|w| match w {
            Write::FeesPaid(totals) => Some(totals.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        records, 0,
        "no request's whole record rewritten for its fee"
    );
    assert_eq!(paid.len(), 1, "one write for the whole payment");
    assert_eq!(paid[0].len(), N);
    let first: Vec<Amount> = paid[0].iter().map(|(_, a)| *a).collect();
    assert!(first.iter().all(|a| *a > Amount::ZERO));
    // A is paid and takes it.
    let errors = h.pump(Time(1_000));
    assert!(errors.is_empty(), "{errors:?}");
    let a_got = |h: &Network| h.channel(0, ChannelId(1)).unwrap().incoming.cumulative;
    let after_first = a_got(&h);
    assert_eq!(
        after_first,
        Amount::checked_sum(first.iter().copied()).unwrap()
    );
    // B restarts from its store: it knows what it paid, so its next sync pays each
    // request one more second's fee (rate 1 per ms), not the whole of it again.
    h.crash(1, Time(1_500));
    pump(&mut h, Time(1_500), false);
    h.nodes[1].engine.handle_timeout(Time(2_000));
    let writes = writes_of_b(&mut h);
    let again: Vec<_> = writes
        .iter()
        .filter_map(|w| match w {
            Write::FeesPaid(totals) => Some(totals.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(again.len(), 1);
    for ((id, before), (id2, now)) in paid[0].iter().zip(&again[0]) {
        assert_eq!(id, id2);
        assert_eq!(now.checked_sub(*before).unwrap(), Amount(1_000));
    }
    let errors = h.pump(Time(2_000));
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        a_got(&h).checked_sub(after_first).unwrap(),
        Amount(1_000 * N as u128)
    );
}

#[test]
fn a_relay_forwards_a_response_before_its_record_is_durable_and_a_crash_then_loses_nothing() {
    let (keys, mut h) = network();
    let id = request_at_c(&mut h, &keys);
    h.nodes[2]
        .engine
        .respond(id, b"y".to_vec(), Time(2))
        .unwrap();
    let is_response =
        |t: &por_protocol::engine::Transmit| matches!(t.message, Message::Response { .. });
    // The server signs its response: it waits for the server's writes.
    assert!(!h.nodes[2].transmits().iter().any(is_response));
    let response = h.nodes[2]
        .flush()
        .into_iter()
        .find(is_response)
        .expect("released once durable");
    h.deliver(2, 1, response.message, Time(2)).unwrap();
    // B relays it with no fee: it leaves at once, before B's record of it is durable.
    let early: Vec<_> = h.nodes[1].transmits();
    let relayed = early
        .into_iter()
        .find(is_response)
        .expect("the relayed response left before B's writes were durable");
    assert_eq!(relayed.to, keys[0].id());
    assert!(
        h.nodes[1].engine.poll_writes().is_some(),
        "B's record was not durable"
    );
    h.deliver(1, 0, relayed.message, Time(2)).unwrap();
    // B crashes before its record is durable: it restarts still awaiting the response.
    h.crash(1, Time(3));
    assert_eq!(h.nodes[1].engine.pending().count(), 1);
    let errors = h.pump(Time(3));
    // C sent it again, B forwarded it again, and A refused the copy without dropping B.
    assert!(
        errors.iter().all(|e| !e.is_fatal()),
        "a fatal refusal: {errors:?}"
    );
    let delivered = h.nodes[0]
        .events()
        .into_iter()
        .filter(|e| matches!(e, Event::ResponseDelivered { .. }))
        .count();
    assert_eq!(delivered, 1, "A got the response exactly once");
    assert!(
        h.nodes[1].engine.pending().next().is_none(),
        "nothing left in flight at B"
    );
    // Money as if nothing had happened.
    assert_paid_once(&h);
}

#[test]
fn a_client_restarted_with_its_clock_stepped_back_never_reuses_a_request_id() {
    use por_protocol::store::Write;
    let (keys, mut h) = network();
    // Three requests, each answered and ended at A before the restart; the floor
    // that covers their nonces is written once, with the first.
    let mut before = Vec::new();
    for at in 1..=3 {
        let id = h.nodes[0]
            .engine
            .send_request(route(&keys), b"x".to_vec(), 64, Amount(1), Time(at))
            .unwrap();
        pump(&mut h, Time(at), false);
        h.nodes[2]
            .engine
            .respond(id, b"y".to_vec(), Time(at))
            .unwrap();
        pump(&mut h, Time(at), false);
        before.push(id);
    }
    assert!(
        h.nodes[0].engine.pending().next().is_none(),
        "all three ended at A"
    );
    let floor = h.nodes[0].store.nonce_floor;
    assert_eq!(floor, 1 + por_protocol::engine::NONCE_BLOCK);
    // A restarts with its clock back at zero, and sends the very same request: its
    // nonce is past the floor, so its id is new.
    h.crash(0, Time::ZERO);
    let again = h.nodes[0]
        .engine
        .send_request(route(&keys), b"x".to_vec(), 64, Amount(1), Time::ZERO)
        .unwrap();
    assert!(!before.contains(&again), "a request id was reused");
    let writes: Vec<Write> = std::iter::from_fn(|| h.nodes[0].engine.poll_writes())
        .flat_map(|b| b.writes)
        .collect();
    assert!(
        matches!(writes.first(), Some(Write::NonceFloor(f)) if *f == floor + 1 + por_protocol::engine::NONCE_BLOCK),
        "the new floor is written first, before the request's own writes: {writes:?}"
    );
}

//! A live engine (B) played against by an arbitrary neighbour: the input is a script
//! of steps (honest requests from A's own engine, raw frames, frames of A's with a
//! byte flipped, answers, time passing, disconnects, B crashing and restarting from
//! its durable store). After every step: nothing panicked, B's state of the channel
//! never goes backwards, and B never holds more from A than A signed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use por_protocol::engine::Event;
use por_protocol::messages::encode_frame;
use por_protocol::testing::{test_edge, Network};
use por_protocol::types::{ChannelId, RequestId, Route};
use por_protocol::{Amount, EngineConfig, Keypair, Time};

fuzz_target!(|data: &[u8]| {
    let keys = [Keypair::from_seed([1; 32]), Keypair::from_seed([2; 32])];
    let edge = test_edge(1, &keys[0], &keys[1]);
    let (a, b) = (keys[0].id(), keys[1].id());
    let configs = [EngineConfig::default(), EngineConfig::default()];
    let mut net = Network::new(keys.into_iter().zip(configs), vec![edge], Time::ZERO);
    let route = Route {
        nodes: vec![a, b],
        channels: vec![ChannelId(1)],
    };
    let mut now = Time(1_000);
    let mut asked: Vec<RequestId> = Vec::new();
    let mut last_frame: Vec<u8> = Vec::new();
    let mut seen_in = Amount::ZERO;
    let mut bytes = data.iter().copied();
    while let Some(op) = bytes.next() {
        match op % 7 {
            0 => {
                let n = bytes.next().unwrap_or(0);
                let _ = net.nodes[0].engine.send_request(
                    route.clone(),
                    vec![n; usize::from(n % 64)],
                    u64::from(n),
                    Amount(1),
                    now,
                );
                if let Some(t) = net.nodes[0].flush().into_iter().last() {
                    last_frame = encode_frame(&t.message).unwrap_or_default();
                    let _ = net.nodes[1].engine.handle_message(a, t.message, now);
                }
            }
            1 => {
                let len = usize::from(bytes.next().unwrap_or(0));
                let raw: Vec<u8> = bytes.by_ref().take(len).collect();
                let _ = net.nodes[1].engine.handle_frame(a, &raw, now);
            }
            2 => {
                let at = usize::from(bytes.next().unwrap_or(0));
                let mut frame = last_frame.clone();
                if !frame.is_empty() {
                    let i = at % frame.len();
                    frame[i] ^= 1 << (at % 8);
                    let _ = net.nodes[1].engine.handle_frame(a, &frame, now);
                }
            }
            3 => {
                if let Some(id) = asked.pop() {
                    let _ = net.nodes[1].engine.respond(id, b"answer".to_vec(), now);
                }
            }
            4 => {
                now = Time(now.0 + u64::from(bytes.next().unwrap_or(0)) * 10);
                for n in &mut net.nodes {
                    n.engine.handle_timeout(now);
                }
            }
            5 => {
                net.nodes[1].engine.peer_disconnected(a, now);
                net.nodes[0].engine.peer_disconnected(b, now);
                net.nodes[1].engine.peer_connected(a, now);
                net.nodes[0].engine.peer_connected(b, now);
            }
            _ => {
                // B comes back with what was durable: that is its state from now on.
                net.crash(1, now);
                asked.clear();
                seen_in = net
                    .channel(1, ChannelId(1))
                    .map_or(Amount::ZERO, |c| c.incoming.cumulative);
            }
        }
        let _ = net.pump(now);
        for e in net.events(1) {
            if let Event::RequestReceived { request, .. } = e {
                asked.push(request);
            }
        }
        let Some(at_b) = net.channel(1, ChannelId(1)).cloned() else {
            return;
        };
        assert!(
            at_b.incoming.cumulative >= seen_in,
            "B's state went backwards"
        );
        seen_in = at_b.incoming.cumulative;
        if let Some(at_a) = net.channel(0, ChannelId(1)) {
            assert!(
                at_b.incoming.cumulative <= at_a.outgoing.cumulative,
                "B holds more from A than A signed"
            );
        }
    }
});

//! Every frame of an honest exchange (a paid request over two hops, its response, a
//! late one with its fees, syncs, a reconnection) decodes back to itself; with
//! `POR_FUZZ_SEEDS=DIR` set, the frames are also written as the seed corpora of the
//! fuzz targets (`fuzz/corpus/<target>/`, docs/fuzzing.md).
#![allow(clippy::unwrap_used)]

use por_protocol::messages::{decode_frame, encode_frame, Message};
use por_protocol::testing::{test_edge as edge, Network};
use por_protocol::types::{ChannelId, Route};
use por_protocol::{wire, Amount, EngineConfig, Keypair, Time};

/// Delivers every frame until quiet, returning them all.
fn exchange(net: &mut Network, now: Time) -> Vec<Message> {
    let mut all = Vec::new();
    loop {
        let mut moved = false;
        for i in 0..net.nodes.len() {
            let from = net.id(i);
            for t in net.nodes[i].flush() {
                moved = true;
                all.push(t.message.clone());
                if let Some(j) = net.index(&t.to) {
                    let _ = net.nodes[j].engine.handle_message(from, t.message, now);
                }
            }
        }
        if !moved {
            return all;
        }
    }
}

#[test]
fn every_frame_of_an_honest_exchange_decodes_to_itself() {
    let keys = [1u8, 2, 3].map(|i| Keypair::from_seed([i; 32]));
    let edges = vec![edge(1, &keys[0], &keys[1]), edge(2, &keys[1], &keys[2])];
    // Nobody severs: the late request pays fees at syncs instead.
    let configs = [0, 1, 2].map(|_| EngineConfig {
        sever_policy: por_protocol::SeverPolicy::Never,
        heuristic: None,
        ..EngineConfig::default()
    });
    let mut net = Network::new(keys.clone().into_iter().zip(configs), edges, Time::ZERO);
    let route = Route {
        nodes: keys.iter().map(Keypair::id).collect(),
        channels: vec![ChannelId(1), ChannelId(2)],
    };
    let mut frames = Vec::new();
    let t0 = Time(1_000);
    let on_time = net.nodes[0]
        .engine
        .send_request(route.clone(), b"hello".to_vec(), 64, Amount(1), t0)
        .unwrap();
    let late = net.nodes[0]
        .engine
        .send_request(route.clone(), b"late".to_vec(), 64, Amount(1), t0)
        .unwrap();
    frames.extend(exchange(&mut net, t0));
    net.nodes[2]
        .engine
        .respond(on_time, b"world".to_vec(), t0)
        .unwrap();
    frames.extend(exchange(&mut net, t0));
    for step in 1..=5u64 {
        let t = Time(t0.0 + step * 100);
        for n in &mut net.nodes {
            n.engine.handle_timeout(t);
        }
        frames.extend(exchange(&mut net, t));
    }
    let t = Time(t0.0 + 600);
    net.nodes[2]
        .engine
        .respond(late, b"sorry".to_vec(), t)
        .unwrap();
    frames.extend(exchange(&mut net, t));
    let (a, b) = (net.id(0), net.id(1));
    net.nodes[0].engine.peer_disconnected(b, t);
    net.nodes[1].engine.peer_disconnected(a, t);
    net.nodes[0].engine.peer_connected(b, t);
    net.nodes[1].engine.peer_connected(a, t);
    frames.extend(exchange(&mut net, t));

    let kinds: std::collections::BTreeSet<String> = frames
        .iter()
        .map(|m| {
            format!("{m:?}")
                .split([' ', '(', '{'])
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    for kind in ["Request", "Ack", "Response", "Sync", "Reestablish"] {
        assert!(kinds.contains(kind), "{kind} missing from {kinds:?}");
    }
    let mut encoded = Vec::new();
    for m in &frames {
        let bytes = encode_frame(m).unwrap();
        assert_eq!(&decode_frame(&bytes).unwrap(), m);
        encoded.push(bytes);
    }
    let Some(dir) = std::env::var_os("POR_FUZZ_SEEDS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let write = |target: &str, name: String, bytes: &[u8]| {
        let d = dir.join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), bytes).unwrap();
    };
    for (i, bytes) in encoded.iter().enumerate() {
        write("message", format!("frame-{i:03}"), bytes);
        // The frame decoder's input: a chunk size, then `len | stream | payload`.
        let mut framed = vec![5u8];
        framed.extend(u32::try_from(bytes.len()).unwrap().to_be_bytes());
        framed.extend(0u32.to_be_bytes());
        framed.extend(bytes);
        write("frame_decoder", format!("frame-{i:03}"), &framed);
        // The engine script: step 1 (a raw frame) with its length.
        if bytes.len() < 256 {
            let mut script = vec![1u8, bytes.len() as u8];
            script.extend(bytes);
            write("engine_peer", format!("frame-{i:03}"), &script);
        }
    }
    for (i, m) in frames.iter().enumerate() {
        let seed = |which: u8, bytes: Vec<u8>| {
            // `which`, then the signature bit the target flips.
            let mut s = vec![which, 5];
            s.extend(bytes);
            write("signed", format!("{which}-{i:03}"), &s);
        };
        match m {
            Message::Request(r) => {
                seed(0, wire::encode(&r.payment).unwrap());
                seed(3, wire::encode(&r.header).unwrap());
            }
            Message::Response { response, .. } => seed(1, wire::encode(response).unwrap()),
            _ => {}
        }
    }
}

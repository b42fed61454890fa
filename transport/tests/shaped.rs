//! The latency-shaping wrapper, on tokio's paused clock: exact, and no real waiting.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use por_protocol::Keypair;
use por_transport::mem::{MemNetwork, MemTransport};
use por_transport::shaped::Shaped;
use por_transport::{Connection, Listener, Transport, TransportConfig, TransportError};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn every_frame_arrives_exactly_the_delay_later_in_order() {
    let net = MemNetwork::new();
    let (ka, kb) = (Keypair::from_seed([1; 32]), Keypair::from_seed([2; 32]));
    let cfg = TransportConfig {
        idle_timeout: Duration::from_secs(3600),
        ..TransportConfig::default()
    };
    let mut l = MemTransport::new(&ka, &net, cfg.clone())
        .listen("a")
        .await
        .unwrap();
    let tb = MemTransport::new(&kb, &net, cfg.clone());
    let (c, s) = tokio::join!(tb.dial("a", ka.id()), l.accept());
    let delay = Duration::from_millis(200);
    let c = Shaped::new(c.unwrap(), delay, cfg.max_frame_len, 64);
    let s = s.unwrap();
    assert_eq!(c.peer(), ka.id());
    let t0 = Instant::now();
    let s = std::sync::Arc::new(s);
    let receiver = {
        let s = s.clone();
        tokio::spawn(async move {
            let mut arrivals = Vec::new();
            for _ in 0..10 {
                let (_, f) = s.recv().await.unwrap();
                arrivals.push((f[0], Instant::now() - t0));
            }
            arrivals
        })
    };
    for i in 0..10u8 {
        c.send(0, Bytes::from(vec![i])).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // Sent at 30 i ms, delivered at 30 i + 200 ms, in order: not a millisecond early.
    let expected: Vec<(u8, Duration)> = (0..10u8)
        .map(|i| (i, Duration::from_millis(30 * u64::from(i)) + delay))
        .collect();
    assert_eq!(receiver.await.unwrap(), expected);
    // The size limit is checked at once, not after the delay.
    let err = c
        .send(0, Bytes::from(vec![0; cfg.max_frame_len + 1]))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Oversized { .. }));
    // Replies are not delayed unless that side is shaped too.
    let t1 = Instant::now();
    s.send(0, Bytes::from_static(b"back")).await.unwrap();
    assert_eq!(c.recv().await.unwrap().1, Bytes::from_static(b"back"));
    assert_eq!(Instant::now(), t1);
}

/// A burst keeps its order and arrives exactly the delay later; a burst holding an
/// oversized frame is refused whole, none of it sent.
#[tokio::test(start_paused = true)]
async fn a_burst_is_delayed_in_order_and_checked_whole() {
    let net = MemNetwork::new();
    let (ka, kb) = (Keypair::from_seed([1; 32]), Keypair::from_seed([2; 32]));
    let cfg = TransportConfig {
        idle_timeout: Duration::from_secs(3600),
        ..TransportConfig::default()
    };
    let mut l = MemTransport::new(&ka, &net, cfg.clone())
        .listen("a")
        .await
        .unwrap();
    let tb = MemTransport::new(&kb, &net, cfg.clone());
    let (c, s) = tokio::join!(tb.dial("a", ka.id()), l.accept());
    let delay = Duration::from_millis(200);
    let c = Shaped::new(c.unwrap(), delay, cfg.max_frame_len, 64);
    let s = s.unwrap();
    let bad = vec![
        Bytes::from_static(b"x"),
        Bytes::from(vec![0; cfg.max_frame_len + 1]),
    ];
    let err = c.send_all(0, bad).await.unwrap_err();
    assert!(matches!(err, TransportError::Oversized { .. }));
    let t0 = Instant::now();
    let burst: Vec<Bytes> = (0..5u8).map(|i| Bytes::from(vec![i; 3])).collect();
    c.send_all(0, burst.clone()).await.unwrap();
    for want in burst {
        assert_eq!(s.recv().await.unwrap(), (0, want));
        assert_eq!(Instant::now() - t0, delay);
    }
}

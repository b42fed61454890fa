//! QUIC lanes do not block each other: a frame stalled halfway on one lane does not
//! hold back complete frames on another (on TCP it would, by construction).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use por_protocol::Keypair;
use por_transport::quic::QuicTransport;
use por_transport::tls::{self, Identity};
use por_transport::{Connection, Listener, Transport, TransportConfig, TransportError};
use tokio::time::timeout;

fn frame(stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(&stream.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_lane_does_not_block_the_others() {
    let (ks, kc) = (Keypair::from_seed([1; 32]), Keypair::from_seed([2; 32]));
    let cfg = TransportConfig {
        frame_timeout: Duration::from_secs(2),
        ..TransportConfig::default()
    };
    let server = QuicTransport::new(&ks, cfg).unwrap();
    let mut l = server.listen("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr();

    let (ccfg, _) = tls::client_config(&Identity::new(&kc).unwrap(), ks.id()).unwrap();
    let ccfg = quinn::crypto::rustls::QuicClientConfig::try_from(ccfg).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(ccfg)));
    let conn = ep
        .connect(addr.parse().unwrap(), tls::SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    let accepted = l.accept().await.unwrap();

    // Lane 1: a 1000-byte frame of which only 10 bytes ever arrive.
    let mut stalled = conn.open_uni().await.unwrap();
    let mut partial = frame(1, &[0u8; 1000]);
    partial.truncate(18);
    stalled.write_all(&partial).await.unwrap();
    // Lane 2: complete frames after it.
    let mut flowing = conn.open_uni().await.unwrap();
    for i in 0..20u8 {
        flowing.write_all(&frame(2, &[i; 100])).await.unwrap();
    }
    for i in 0..20u8 {
        let (s, f) = timeout(Duration::from_secs(1), accepted.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((s, f), (2, Bytes::from(vec![i; 100])));
    }
    // The stalled lane is then cut off by the frame timeout.
    let err = timeout(Duration::from_secs(5), accepted.recv())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, TransportError::Timeout("frame")), "{err}");
}

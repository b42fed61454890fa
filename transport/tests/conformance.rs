//! One conformance suite for every transport: TCP, QUIC and in-memory run the same
//! tests. Byte-level attacks (garbage before the handshake, a forged oversized header,
//! a stalled frame) need a byte stream, which the in-memory transport does not have;
//! for it those tests check what applies (the local size check, idle peers) and say so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use por_protocol::{Keypair, NodeId};
use por_transport::mem::{MemNetwork, MemTransport};
use por_transport::quic::QuicTransport;
use por_transport::tcp::TcpTransport;
use por_transport::{Connection, Frame, Listener, Transport, TransportConfig, TransportError};
use tokio::time::{timeout, Instant};

const MAX: usize = 64 * 1024;

fn config() -> TransportConfig {
    TransportConfig {
        max_frame_len: MAX,
        handshake_timeout: Duration::from_millis(800),
        frame_timeout: Duration::from_millis(800),
        idle_timeout: Duration::from_millis(1500),
        keep_alive: Duration::from_millis(200),
        queue_bytes: 4 * MAX,
        max_handshakes: 256,
        max_partial_bytes: 4 * MAX,
        stream_window: 2 * MAX,
        connection_window: 8 * MAX,
    }
}

fn key(i: u8) -> Keypair {
    Keypair::from_seed([i; 32])
}

/// How one transport is set up, and what raw access to its bytes a test has.
trait Fixture: Send + Sync + 'static {
    type T: Transport;
    fn transport(&self, key: &Keypair) -> Self::T;
    fn listen_addr(&self) -> &'static str;
    /// Opens an authenticated session as `client` to `server` at `addr` and writes raw
    /// bytes on it (inside the encryption, bypassing the sender's checks). Returns a
    /// guard that keeps the session open, or `None` without a byte stream.
    fn raw_session(
        &self,
        addr: String,
        client: Keypair,
        server: NodeId,
        bytes: Vec<u8>,
    ) -> impl Future<Output = Option<Box<dyn std::any::Any + Send>>> + Send;
    /// Sends unauthenticated garbage to `addr` for `dur`, slowly; `None` without a
    /// byte stream.
    fn slowloris(&self, addr: String, dur: Duration) -> impl Future<Output = Option<Slow>> + Send;
}

/// What a slowloris sender experienced.
#[derive(Debug, PartialEq, Eq)]
enum Slow {
    /// The server hung up on it (connection-oriented transports).
    CutOff,
    /// It was still connected when it gave up.
    StillOpen,
    /// Datagrams: the server keeps no state for junk; the caller checks that no
    /// connection came of it.
    Stateless,
}

struct Tcp;
struct Quic;
struct Mem(MemNetwork);

impl Fixture for Tcp {
    type T = TcpTransport;
    fn transport(&self, key: &Keypair) -> TcpTransport {
        TcpTransport::new(key, config()).unwrap()
    }
    fn listen_addr(&self) -> &'static str {
        "127.0.0.1:0"
    }
    async fn raw_session(
        &self,
        addr: String,
        client: Keypair,
        server: NodeId,
        bytes: Vec<u8>,
    ) -> Option<Box<dyn std::any::Any + Send>> {
        use tokio::io::AsyncWriteExt;
        let id = por_transport::tls::Identity::new(&client).unwrap();
        let (cfg, _) = por_transport::tls::client_config(&id, server).unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let name =
            rustls::pki_types::ServerName::try_from(por_transport::tls::SERVER_NAME).unwrap();
        let mut tls = connector.connect(name, sock).await.unwrap();
        tls.write_all(&bytes).await.unwrap();
        tls.flush().await.unwrap();
        Some(Box::new(tls))
    }
    async fn slowloris(&self, addr: String, dur: Duration) -> Option<Slow> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let deadline = Instant::now() + dur;
        let mut buf = [0u8; 64];
        while Instant::now() < deadline {
            // One garbage byte, then see whether the server has hung up.
            if sock.write_all(&[0x16]).await.is_err() {
                return Some(Slow::CutOff);
            }
            match timeout(Duration::from_millis(100), sock.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Some(Slow::CutOff),
                _ => {}
            }
        }
        Some(Slow::StillOpen)
    }
}

impl Fixture for Quic {
    type T = QuicTransport;
    fn transport(&self, key: &Keypair) -> QuicTransport {
        QuicTransport::new(key, config()).unwrap()
    }
    fn listen_addr(&self) -> &'static str {
        "127.0.0.1:0"
    }
    async fn raw_session(
        &self,
        addr: String,
        client: Keypair,
        server: NodeId,
        bytes: Vec<u8>,
    ) -> Option<Box<dyn std::any::Any + Send>> {
        let id = por_transport::tls::Identity::new(&client).unwrap();
        let (cfg, _) = por_transport::tls::client_config(&id, server).unwrap();
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(cfg).unwrap();
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let conn = ep
            .connect(addr.parse().unwrap(), por_transport::tls::SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        let mut s = conn.open_uni().await.unwrap();
        s.write_all(&bytes).await.unwrap();
        Some(Box::new((ep, conn, s)))
    }
    async fn slowloris(&self, addr: String, dur: Duration) -> Option<Slow> {
        // Junk datagrams: QUIC drops them without state; the server must stay up.
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let deadline = Instant::now() + dur;
        while Instant::now() < deadline {
            sock.send_to(&[0xff; 40], &addr).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(Slow::Stateless)
    }
}

impl Fixture for Mem {
    type T = MemTransport;
    fn transport(&self, key: &Keypair) -> MemTransport {
        MemTransport::new(key, &self.0, config())
    }
    fn listen_addr(&self) -> &'static str {
        ""
    }
    async fn raw_session(
        &self,
        _: String,
        _: Keypair,
        _: NodeId,
        _: Vec<u8>,
    ) -> Option<Box<dyn std::any::Any + Send>> {
        None
    }
    async fn slowloris(&self, _: String, _: Duration) -> Option<Slow> {
        None
    }
}

type Conn<F> = <<F as Fixture>::T as Transport>::Conn;

/// A listener on key 1 and a client on key 2, connected.
async fn pair<F: Fixture>(f: &F) -> (F::T, <F::T as Transport>::Listener, Conn<F>, Conn<F>) {
    let server = f.transport(&key(1));
    let mut listener = server.listen(f.listen_addr()).await.unwrap();
    let client = f.transport(&key(2));
    let addr = listener.local_addr();
    let (c, s) = tokio::join!(client.dial(&addr, key(1).id()), listener.accept());
    (server, listener, c.unwrap(), s.unwrap())
}

fn payload(stream: u32, n: usize, len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    for (i, b) in v.iter_mut().enumerate() {
        *b = (i as u32 ^ n as u32 ^ stream.wrapping_mul(31)) as u8;
    }
    Bytes::from(v)
}

async fn frames_arrive_intact_and_in_order<F: Fixture>(f: F) {
    let (_t, _l, client, server) = pair(&f).await;
    assert_eq!(
        client.peer(),
        key(1).id(),
        "client sees the verified server"
    );
    assert_eq!(
        server.peer(),
        key(2).id(),
        "server sees the verified client"
    );
    let client = Arc::new(client);
    let sizes = [0usize, 1, 7, 255, 4096, MAX - 1, MAX];
    let mut senders = Vec::new();
    for stream in 0..3u32 {
        let c = client.clone();
        senders.push(tokio::spawn(async move {
            for n in 0..60usize {
                let len = sizes[n % sizes.len()];
                c.send(stream, payload(stream, n, len)).await.unwrap();
            }
        }));
    }
    let mut next = [0usize; 3];
    for _ in 0..180 {
        let (stream, frame) = timeout(Duration::from_secs(10), server.recv())
            .await
            .unwrap()
            .unwrap();
        let n = next[stream as usize];
        let len = sizes[n % sizes.len()];
        assert_eq!(frame, payload(stream, n, len), "stream {stream} frame {n}");
        next[stream as usize] += 1;
    }
    for s in senders {
        s.await.unwrap();
    }
    assert_eq!(next, [60, 60, 60]);
}

async fn a_burst_arrives_as_its_frames_in_order<F: Fixture>(f: F) {
    let (_t, _l, client, server) = pair(&f).await;
    let client = Arc::new(client);
    let sizes = [0usize, 3, 4096, 1, MAX];
    let burst: Vec<Bytes> = (0..40).map(|n| payload(1, n, sizes[n % 5])).collect();
    // The receiver reads while the burst is written: a burst larger than the
    // transport's buffering must wait for it, not fail.
    let c = client.clone();
    let sent = burst.clone();
    let sender = tokio::spawn(async move {
        c.send_all(1, sent).await.unwrap();
        c.send(1, Bytes::from_static(b"after")).await.unwrap();
    });
    for (n, want) in burst.iter().enumerate() {
        let (stream, frame) = timeout(Duration::from_secs(10), server.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((stream, &frame), (1, want), "frame {n}");
    }
    assert_eq!(
        server.recv().await.unwrap(),
        (1, Bytes::from_static(b"after"))
    );
    sender.await.unwrap();
    // A burst with an oversized frame is refused; the connection goes on.
    let bad = vec![Bytes::from_static(b"x"), Bytes::from(vec![0u8; MAX + 1])];
    assert!(matches!(
        client.send_all(1, bad).await,
        Err(TransportError::Oversized { .. })
    ));
    // Nothing of the refused burst was sent: the next frame is the next one sent.
    client.send(1, Bytes::from_static(b"still")).await.unwrap();
    assert_eq!(
        server.recv().await.unwrap(),
        (1, Bytes::from_static(b"still"))
    );
    // Frames made of parts (as a relay sends a body it forwards) arrive as their
    // parts joined, whatever the parts' sizes.
    let framed: Vec<Frame> = (0..15)
        .map(|n| {
            let b = payload(2, n, sizes[n % 5]);
            let l = b.len();
            match n % 3 {
                0 => Frame::from(b),
                1 => Frame::from_parts(vec![b.slice(..l / 2), b.slice(l / 2..)]),
                _ => Frame::from_parts(vec![
                    b.slice(..l.min(7)),
                    b.slice(l.min(7)..l - l / 10),
                    b.slice(l - l / 10..),
                ]),
            }
        })
        .collect();
    let c = client.clone();
    let sent = framed.clone();
    let sender = tokio::spawn(async move { c.send_frames(2, sent).await.unwrap() });
    for (n, want) in framed.into_iter().enumerate() {
        let (stream, frame) = timeout(Duration::from_secs(10), server.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((stream, frame), (2, want.into_bytes()), "framed {n}");
    }
    sender.await.unwrap();
    // A frame whose parts add up to more than the limit is refused.
    let over = Frame::from_parts(vec![Bytes::from(vec![0u8; MAX]), Bytes::from_static(b"!")]);
    assert!(matches!(
        client.send_frames(2, vec![over]).await,
        Err(TransportError::Oversized { .. })
    ));
    client.send(2, Bytes::from_static(b"on")).await.unwrap();
    assert_eq!(server.recv().await.unwrap(), (2, Bytes::from_static(b"on")));
}

async fn oversized_frames_are_refused<F: Fixture>(f: F) {
    let (_t, mut listener, client, server) = pair(&f).await;
    // Locally: refused, and the connection goes on.
    let err = client
        .send(0, Bytes::from(vec![0u8; MAX + 1]))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Oversized { len, max } if len == MAX + 1 && max == MAX));
    client
        .send(0, Bytes::from_static(b"still here"))
        .await
        .unwrap();
    assert_eq!(
        server.recv().await.unwrap().1,
        Bytes::from_static(b"still here")
    );
    // From a peer that bypasses the check: its connection is dropped, ours is not.
    let mut header = ((MAX + 1) as u32).to_be_bytes().to_vec();
    header.extend_from_slice(&0u32.to_be_bytes());
    let addr = listener.local_addr();
    let Some(_guard) = f.raw_session(addr, key(3), key(1).id(), header).await else {
        eprintln!("in-memory transport: no byte stream, only the local size check applies");
        return;
    };
    let bad = timeout(Duration::from_secs(5), listener.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bad.peer(), key(3).id());
    let err = timeout(Duration::from_secs(5), bad.recv())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, TransportError::Oversized { .. }), "{err}");
    client
        .send(0, Bytes::from_static(b"unaffected"))
        .await
        .unwrap();
    assert_eq!(
        server.recv().await.unwrap().1,
        Bytes::from_static(b"unaffected")
    );
}

async fn garbage_is_dropped_without_disturbing_others<F: Fixture>(f: F) {
    let (_t, listener, client, server) = pair(&f).await;
    let addr = listener.local_addr();
    let mut listener = listener;
    let Some(_) = f.slowloris(addr, Duration::from_millis(600)).await else {
        eprintln!("in-memory transport: no byte stream to send garbage on");
        return;
    };
    // Garbage never becomes a connection.
    assert!(timeout(Duration::from_millis(300), listener.accept())
        .await
        .is_err());
    client.send(0, Bytes::from_static(b"fine")).await.unwrap();
    assert_eq!(server.recv().await.unwrap().1, Bytes::from_static(b"fine"));
}

async fn hundreds_of_concurrent_requests_and_many_connections<F: Fixture>(f: F) {
    let server_t = f.transport(&key(1));
    let mut listener = server_t.listen(f.listen_addr()).await.unwrap();
    let addr = listener.local_addr();
    // Echo server: every accepted connection answers each frame on its stream.
    let echo = tokio::spawn(async move {
        loop {
            let Ok(conn) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let conn = Arc::new(conn);
                while let Ok((s, f)) = conn.recv().await {
                    let c = conn.clone();
                    tokio::spawn(async move {
                        let _ = c.send(s, f).await;
                    });
                }
            });
        }
    });
    let mut clients = Vec::new();
    for c in 0..16u8 {
        let t = f.transport(&key(10 + c));
        let addr = addr.clone();
        clients.push(tokio::spawn(async move {
            let conn = Arc::new(t.dial(&addr, key(1).id()).await.unwrap());
            let per_conn = if c == 0 { 400 } else { 40 };
            let reader = {
                let conn = conn.clone();
                tokio::spawn(async move {
                    let mut seen = std::collections::BTreeSet::new();
                    while seen.len() < per_conn {
                        let (_, f) = timeout(Duration::from_secs(20), conn.recv())
                            .await
                            .unwrap()
                            .unwrap();
                        let id = u32::from_be_bytes(f[..4].try_into().unwrap());
                        assert!(seen.insert(id), "duplicate echo {id}");
                    }
                    seen.len()
                })
            };
            let mut sends = Vec::new();
            for id in 0..per_conn as u32 {
                let conn = conn.clone();
                sends.push(tokio::spawn(async move {
                    let mut body = id.to_be_bytes().to_vec();
                    body.extend_from_slice(&[7u8; 252]);
                    conn.send(id % 8, Bytes::from(body)).await.unwrap();
                }));
            }
            for s in sends {
                s.await.unwrap();
            }
            reader.await.unwrap()
        }));
    }
    let mut total = 0;
    for c in clients {
        total += c.await.unwrap();
    }
    assert_eq!(total, 400 + 15 * 40);
    echo.abort();
}

async fn a_disconnect_is_seen_on_both_sides<F: Fixture>(f: F) {
    let (t, mut listener, client, server) = pair(&f).await;
    client.close();
    let err = timeout(Duration::from_secs(5), server.recv())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, TransportError::Closed), "{err}");
    let err = timeout(Duration::from_secs(5), client.recv())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, TransportError::Closed), "{err}");
    // And the other way round, by dropping the connection.
    let c2 = f.transport(&key(4));
    let addr = listener.local_addr();
    let (c, s) = tokio::join!(c2.dial(&addr, key(1).id()), listener.accept());
    let (c, s) = (c.unwrap(), s.unwrap());
    drop(s);
    let err = timeout(Duration::from_secs(5), c.recv())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, TransportError::Closed), "{err}");
    let mut failed = false;
    for _ in 0..50 {
        if c.send(0, Bytes::from_static(b"x")).await.is_err() {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(failed, "sending to a closed peer must fail");
    drop(t);
}

async fn a_wrong_identity_is_refused<F: Fixture>(f: F) {
    let server = f.transport(&key(1));
    let mut listener = server.listen(f.listen_addr()).await.unwrap();
    let addr = listener.local_addr();
    let accept =
        tokio::spawn(async move { timeout(Duration::from_millis(1500), listener.accept()).await });
    let client = f.transport(&key(2));
    let err = client.dial(&addr, key(9).id()).await.unwrap_err();
    match err {
        TransportError::WrongIdentity { expected, got } => {
            assert_eq!((expected, got), (key(9).id(), key(1).id()));
        }
        other => panic!("expected WrongIdentity, got {other}"),
    }
    // The listener never hands out the refused connection.
    assert!(!matches!(accept.await.unwrap(), Ok(Ok(_))));
}

async fn slow_and_idle_peers_are_cut_off<F: Fixture>(f: F) {
    let (_t, listener, client, server) = pair(&f).await;
    let addr = listener.local_addr();
    // Unauthenticated: a byte a while never completes a handshake.
    let mut listener = listener;
    match f.slowloris(addr.clone(), Duration::from_millis(2500)).await {
        Some(Slow::CutOff) => {}
        Some(Slow::StillOpen) => panic!("slowloris socket still open after the handshake timeout"),
        Some(Slow::Stateless) => {
            assert!(timeout(Duration::from_millis(300), listener.accept())
                .await
                .is_err());
        }
        None => eprintln!("in-memory transport: no unauthenticated byte stream"),
    }
    // Authenticated but stalled mid-frame: a header announcing 100 bytes, then nothing.
    let mut header = 100u32.to_be_bytes().to_vec();
    header.extend_from_slice(&0u32.to_be_bytes());
    header.extend_from_slice(&[1, 2, 3]);
    if let Some(_guard) = f.raw_session(addr, key(5), key(1).id(), header).await {
        let stalled = timeout(Duration::from_secs(5), listener.accept())
            .await
            .unwrap()
            .unwrap();
        let t0 = Instant::now();
        let err = timeout(Duration::from_secs(5), stalled.recv())
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, TransportError::Timeout("frame")), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(3));
    }
    // Authenticated and silent: the idle timeout.
    let _keep = client;
    let err = timeout(Duration::from_secs(5), server.recv())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, TransportError::Timeout("idle")), "{err}");
}

async fn the_server_keeps_serving_under_a_slowloris_crowd<F: Fixture>(f: F) {
    let server = f.transport(&key(1));
    let mut listener = server.listen(f.listen_addr()).await.unwrap();
    let addr = listener.local_addr();
    let mut crowd = Vec::new();
    for _ in 0..100 {
        let addr = addr.clone();
        let f2 = &f;
        crowd.push(f2.slowloris(addr, Duration::from_millis(1500)));
    }
    let crowd = futures::future::join_all(crowd);
    let legit = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let client = f.transport(&key(2));
        let (c, s) = tokio::join!(client.dial(&addr, key(1).id()), listener.accept());
        let (c, s) = (c.unwrap(), s.unwrap());
        c.send(0, Bytes::from_static(b"served")).await.unwrap();
        s.recv().await.unwrap().1
    };
    let (results, got) = tokio::join!(crowd, legit);
    assert_eq!(got, Bytes::from_static(b"served"));
    if results.iter().all(|r| r.is_none()) {
        eprintln!("in-memory transport: no slowloris possible");
    }
}

async fn dialling_nothing_fails_with_a_typed_error<F: Fixture>(f: F) {
    // An address where nobody listens (a listener opened, then closed).
    let t = f.transport(&key(1));
    let l = t.listen(f.listen_addr()).await.unwrap();
    let addr = l.local_addr();
    drop(l);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let client = f.transport(&key(2));
    let err = timeout(Duration::from_secs(5), client.dial(&addr, key(1).id()))
        .await
        .expect("a dial must not hang")
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Dial { .. }
                | TransportError::Timeout("handshake")
                | TransportError::Handshake(_)
        ),
        "{err}"
    );
    let err = client
        .dial("not an address", key(1).id())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Address { .. } | TransportError::Dial { .. }
        ),
        "{err}"
    );
}

/// Lanes: a long burst of maximal frames on lane 1 does not hold back small frames
/// on lane 0 sent once it is under way; both lanes arrive intact and in order.
async fn a_large_burst_does_not_hold_back_another_lane<F: Fixture>(f: F) {
    const BULK: usize = 256;
    const SMALL: usize = 10;
    let (_t, _l, client, server) = pair(&f).await;
    let client = Arc::new(client);
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let c = client.clone();
    let bulk = tokio::spawn(async move {
        let frames: Vec<Bytes> = (0..BULK).map(|n| payload(1, n, MAX)).collect();
        c.send_all(1, frames).await.unwrap();
    });
    let c = client.clone();
    let small = tokio::spawn(async move {
        started_rx.await.unwrap();
        for n in 0..SMALL {
            c.send(0, payload(0, n, 40)).await.unwrap();
        }
    });
    let mut started = Some(started_tx);
    let (mut next, mut order) = ([0usize; 2], Vec::new());
    while next != [SMALL, BULK] {
        let (stream, frame) = timeout(Duration::from_secs(20), server.recv())
            .await
            .unwrap()
            .unwrap();
        let n = next[stream as usize];
        let len = if stream == 0 { 40 } else { MAX };
        assert_eq!(frame, payload(stream, n, len), "stream {stream} frame {n}");
        next[stream as usize] += 1;
        order.push(stream);
        if let Some(tx) = started.take() {
            tx.send(()).unwrap();
        }
    }
    bulk.await.unwrap();
    small.await.unwrap();
    let last_small = order.iter().rposition(|s| *s == 0).unwrap();
    let bulk_after = order[last_small..].iter().filter(|s| **s == 1).count();
    assert!(
        bulk_after > 0,
        "every small frame waited for the whole {BULK}-frame burst"
    );
    eprintln!("small frames all in with {bulk_after} of {BULK} bulk frames still to come");
}

macro_rules! suite {
    ($name:ident, $fixture:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn frames_arrive_intact_and_in_order_per_stream() {
                super::frames_arrive_intact_and_in_order($fixture).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_large_burst_does_not_hold_back_another_lane() {
                super::a_large_burst_does_not_hold_back_another_lane($fixture).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_burst_arrives_as_its_frames_in_order() {
                super::a_burst_arrives_as_its_frames_in_order($fixture).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn oversized_frames_are_refused() {
                super::oversized_frames_are_refused($fixture).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn garbage_is_dropped_without_disturbing_others() {
                super::garbage_is_dropped_without_disturbing_others($fixture).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn hundreds_of_concurrent_requests_and_many_connections() {
                super::hundreds_of_concurrent_requests_and_many_connections($fixture).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_disconnect_is_seen_on_both_sides() {
                super::a_disconnect_is_seen_on_both_sides($fixture).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_wrong_identity_is_refused() {
                super::a_wrong_identity_is_refused($fixture).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn slow_and_idle_peers_are_cut_off() {
                super::slow_and_idle_peers_are_cut_off($fixture).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn dialling_nothing_fails_with_a_typed_error() {
                super::dialling_nothing_fails_with_a_typed_error($fixture).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn the_server_keeps_serving_under_a_slowloris_crowd() {
                super::the_server_keeps_serving_under_a_slowloris_crowd($fixture).await;
            }
        }
    };
}

suite!(tcp, Tcp);
suite!(quic, Quic);
suite!(mem, Mem(MemNetwork::new()));

/// A frame header as raw bytes.
fn raw_header(len: usize, word: u32) -> Vec<u8> {
    let mut h = (len as u32).to_be_bytes().to_vec();
    h.extend_from_slice(&word.to_be_bytes());
    h
}

/// TCP alone cuts frames into chunks (QUIC has a stream per lane, memory whole
/// frames): a peer that leaves more than `max_partial_bytes` half-sent is dropped, and
/// a chunked frame left unfinished hits the frame timeout even while whole frames on
/// another lane arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_half_sent_frames_are_bounded_in_bytes_and_time() {
    use por_transport::sched::MORE;
    let (_t, mut listener, client, server) = pair(&Tcp).await;
    let addr = listener.local_addr();
    // Five lanes each start a maximal frame: one more than the 4 × MAX bound.
    let mut bytes = Vec::new();
    for lane in 1..=5u32 {
        bytes.extend(raw_header(MAX, lane | MORE));
        bytes.extend(vec![7u8; MAX]);
    }
    let _guard = Tcp
        .raw_session(addr.clone(), key(3), key(1).id(), bytes)
        .await;
    let greedy = listener.accept().await.unwrap();
    let err = timeout(Duration::from_secs(5), greedy.recv())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, TransportError::HalfSent { bytes, max } if bytes == 5 * MAX && max == 4 * MAX),
        "{err}"
    );
    // A first chunk, then a whole frame on lane 0, then nothing.
    let mut bytes = raw_header(100, 1 | MORE);
    bytes.extend([1u8; 100]);
    bytes.extend(raw_header(2, 0));
    bytes.extend(b"hi");
    let _guard = Tcp.raw_session(addr, key(4), key(1).id(), bytes).await;
    let stalled = listener.accept().await.unwrap();
    let t0 = Instant::now();
    assert_eq!(
        stalled.recv().await.unwrap(),
        (0, Bytes::from_static(b"hi"))
    );
    let err = timeout(Duration::from_secs(5), stalled.recv())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, TransportError::Timeout("frame")), "{err}");
    assert!(
        t0.elapsed() < Duration::from_millis(1400),
        "the idle timeout, not the frame timeout"
    );
    // The honest connection is untouched.
    client.send(0, Bytes::from_static(b"fine")).await.unwrap();
    assert_eq!(
        server.recv().await.unwrap(),
        (0, Bytes::from_static(b"fine"))
    );
}

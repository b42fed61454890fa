//! Request/response over loopback: por-transport against plain baselines, same run.
//!
//! 256-byte requests, 256-byte responses, an echo server. Sequential (one in flight)
//! and pipelined (64 in flight). Prints RTT p50/p99 and requests/s for each, and the
//! ratios of por-transport to its baselines:
//!
//! - TCP: por-transport (TLS 1.3, identity-bound) vs plain tokio TCP with
//!   `LengthDelimitedCodec`, and vs tokio-rustls with the same codec (to show what is
//!   TLS and what is the transport);
//! - QUIC: por-transport vs plain quinn (one bidirectional stream, same codec).
//!
//! `cargo bench -p por-transport --bench rtt` (env `POR_RTT_N` = requests per case).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::LocalBoxFuture;
use futures::{SinkExt, StreamExt};
use por_protocol::Keypair;
use por_transport::quic::QuicTransport;
use por_transport::tcp::TcpTransport;
use por_transport::tls::{self, Identity};
use por_transport::{Connection, Listener, Transport, TransportConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Mutex;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

const BODY: usize = 256;
const WINDOW: usize = 64;

/// What the benchmark needs of a connection: send a frame, receive a frame.
trait Wire: Send + Sync + 'static {
    /// Sends; false once the peer is gone.
    fn send(&self, b: Bytes) -> impl std::future::Future<Output = bool> + Send;
    /// Receives; `None` once the peer is gone.
    fn recv(&self) -> impl std::future::Future<Output = Option<Bytes>> + Send;
}

struct Por<C: Connection>(C);

impl<C: Connection> Wire for Por<C> {
    async fn send(&self, b: Bytes) -> bool {
        self.0.send(0, b).await.is_ok()
    }
    async fn recv(&self) -> Option<Bytes> {
        self.0.recv().await.ok().map(|(_, b)| b)
    }
}

struct Plain<R, W> {
    rd: Mutex<FramedRead<R, LengthDelimitedCodec>>,
    wr: Mutex<FramedWrite<W, LengthDelimitedCodec>>,
}

impl<R: AsyncRead + Unpin + Send + 'static, W: AsyncWrite + Unpin + Send + 'static> Plain<R, W> {
    fn new(r: R, w: W) -> Self {
        Plain {
            rd: Mutex::new(FramedRead::new(r, LengthDelimitedCodec::new())),
            wr: Mutex::new(FramedWrite::new(w, LengthDelimitedCodec::new())),
        }
    }
}

impl<R: AsyncRead + Unpin + Send + 'static, W: AsyncWrite + Unpin + Send + 'static> Wire
    for Plain<R, W>
{
    async fn send(&self, b: Bytes) -> bool {
        self.wr.lock().await.send(b).await.is_ok()
    }
    async fn recv(&self) -> Option<Bytes> {
        self.rd.lock().await.next().await?.ok().map(|b| b.freeze())
    }
}

/// Echoes every frame back until the peer goes away.
async fn echo<W: Wire>(w: W) {
    while let Some(b) = w.recv().await {
        if !w.send(b).await {
            return;
        }
    }
}

/// Runs a server on its own thread with its own single-threaded runtime, as a separate
/// process would; returns what `setup` returns (its address) once it is listening.
fn server<A, F, Fut>(setup: F) -> A
where
    A: Send + 'static,
    F: FnOnce(std::sync::mpsc::Sender<A>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(setup(tx));
    });
    rx.recv().unwrap()
}

#[derive(Debug)]
struct Figures {
    p50_us: f64,
    p99_us: f64,
    rps: f64,
}

fn figures(mut rtts: Vec<Duration>, total: Duration) -> Figures {
    rtts.sort();
    let pick = |q: f64| rtts[((rtts.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1e6;
    Figures {
        p50_us: pick(0.50),
        p99_us: pick(0.99),
        rps: rtts.len() as f64 / total.as_secs_f64(),
    }
}

async fn sequential<W: Wire>(w: &W, n: usize) -> Vec<Duration> {
    let body = Bytes::from(vec![7u8; BODY]);
    let mut rtts = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        assert!(w.send(body.clone()).await);
        let r = w.recv().await.unwrap();
        assert_eq!(r.len(), BODY);
        rtts.push(t.elapsed());
    }
    rtts
}

async fn pipelined<W: Wire>(w: Arc<W>, n: usize) -> Vec<Duration> {
    let sent: Arc<std::sync::Mutex<HashMap<u64, Instant>>> = Arc::default();
    let (permits_tx, mut permits_rx) = tokio::sync::mpsc::channel::<()>(WINDOW);
    for _ in 0..WINDOW {
        permits_tx.send(()).await.unwrap();
    }
    let reader = {
        let (w, sent) = (w.clone(), sent.clone());
        tokio::spawn(async move {
            let mut rtts = Vec::with_capacity(n);
            for _ in 0..n {
                let r = w.recv().await.unwrap();
                let id = u64::from_be_bytes(r[..8].try_into().unwrap());
                let t = sent.lock().unwrap().remove(&id).unwrap();
                rtts.push(t.elapsed());
                let _ = permits_tx.try_send(());
            }
            rtts
        })
    };
    for id in 0..n as u64 {
        permits_rx.recv().await.unwrap();
        let mut body = vec![7u8; BODY];
        body[..8].copy_from_slice(&id.to_be_bytes());
        sent.lock().unwrap().insert(id, Instant::now());
        assert!(w.send(Bytes::from(body)).await);
    }
    reader.await.unwrap()
}

/// One measured case: a connection and the samples gathered on it so far.
struct Case {
    name: &'static str,
    run: Box<dyn FnMut(usize) -> LocalBoxFuture<'static, Round>>,
    seq: Vec<Duration>,
    seq_rps: Vec<f64>,
    pipe: Vec<Duration>,
    pipe_rps: Vec<f64>,
}

/// What one round of one case measured.
struct Round {
    seq: Vec<Duration>,
    seq_time: Duration,
    pipe: Vec<Duration>,
    pipe_time: Duration,
}

fn case<W: Wire>(name: &'static str, w: W) -> Case {
    let w = Arc::new(w);
    Case {
        name,
        run: Box::new(move |n| {
            let w = w.clone();
            Box::pin(async move {
                let t = Instant::now();
                let seq = sequential(&*w, n).await;
                let seq_time = t.elapsed();
                let t = Instant::now();
                let pipe = pipelined(w, n * 4).await;
                Round {
                    seq,
                    seq_time,
                    pipe,
                    pipe_time: t.elapsed(),
                }
            })
        }),
        seq: Vec::new(),
        seq_rps: Vec::new(),
        pipe: Vec::new(),
        pipe_rps: Vec::new(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

impl Case {
    fn result(&self) -> (Figures, Figures) {
        let f = |rtts: &[Duration], rps: &[f64]| {
            let mut f = figures(rtts.to_vec(), Duration::from_secs(1));
            f.rps = median(rps.to_vec());
            f
        };
        (f(&self.seq, &self.seq_rps), f(&self.pipe, &self.pipe_rps))
    }
}

fn ratio(name: &str, ours: &(Figures, Figures), base: &(Figures, Figures)) {
    println!(
        "  {name:<44} sequential p50 x{:.2}  req/s x{:.2} | pipelined p50 x{:.2}  req/s x{:.2}",
        ours.0.p50_us / base.0.p50_us,
        ours.0.rps / base.0.rps,
        ours.1.p50_us / base.1.p50_us,
        ours.1.rps / base.1.rps,
    );
}

fn config() -> TransportConfig {
    TransportConfig {
        idle_timeout: Duration::from_secs(600),
        ..TransportConfig::default()
    }
}

async fn por_tcp() -> Case {
    let (ks, kc) = (Keypair::from_seed([1; 32]), Keypair::from_seed([2; 32]));
    let addr = server(move |tx| async move {
        let t = TcpTransport::new(&ks, config()).unwrap();
        let mut l = t.listen("127.0.0.1:0").await.unwrap();
        tx.send(l.local_addr()).unwrap();
        if let Ok(c) = l.accept().await {
            echo(Por(c)).await
        }
    });
    let ks = Keypair::from_seed([1; 32]);
    let c = TcpTransport::new(&kc, config())
        .unwrap()
        .dial(&addr, ks.id())
        .await
        .unwrap();
    case("por-transport TCP (TLS)", Por(c))
}

async fn plain_tcp() -> Case {
    let addr = server(|tx| async move {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        tx.send(l.local_addr().unwrap()).unwrap();
        let Ok((s, _)) = l.accept().await else { return };
        s.set_nodelay(true).unwrap();
        let (r, w) = s.into_split();
        echo(Plain::new(r, w)).await
    });
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (r, w) = s.into_split();
    case("plain tokio TCP + codec", Plain::new(r, w))
}

async fn plain_tls() -> Case {
    let (ks, kc) = (Keypair::from_seed([1; 32]), Keypair::from_seed([2; 32]));
    let (is, ic) = (Identity::new(&ks).unwrap(), Identity::new(&kc).unwrap());
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(&is).unwrap()));
    let (ccfg, _) = tls::client_config(&ic, ks.id()).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(ccfg));
    let addr = server(move |tx| async move {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        tx.send(l.local_addr().unwrap()).unwrap();
        let Ok((s, _)) = l.accept().await else { return };
        s.set_nodelay(true).unwrap();
        let Ok(t) = acceptor.accept(s).await else {
            return;
        };
        let (r, w) = tokio::io::split(t);
        echo(Plain::new(r, w)).await
    });
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let name = rustls::pki_types::ServerName::try_from(tls::SERVER_NAME).unwrap();
    let t = connector.connect(name, s).await.unwrap();
    let (r, w) = tokio::io::split(t);
    case("plain tokio-rustls + codec", Plain::new(r, w))
}

async fn por_quic() -> Case {
    let (ks, kc) = (Keypair::from_seed([1; 32]), Keypair::from_seed([2; 32]));
    let addr = server(move |tx| async move {
        let t = QuicTransport::new(&ks, config()).unwrap();
        let mut l = t.listen("127.0.0.1:0").await.unwrap();
        tx.send(l.local_addr()).unwrap();
        if let Ok(c) = l.accept().await {
            echo(Por(c)).await
        }
    });
    let ks = Keypair::from_seed([1; 32]);
    let c = QuicTransport::new(&kc, config())
        .unwrap()
        .dial(&addr, ks.id())
        .await
        .unwrap();
    case("por-transport QUIC", Por(c))
}

async fn plain_quic() -> Case {
    let (ks, kc) = (Keypair::from_seed([1; 32]), Keypair::from_seed([2; 32]));
    let (is, ic) = (Identity::new(&ks).unwrap(), Identity::new(&kc).unwrap());
    let scfg = quinn::crypto::rustls::QuicServerConfig::try_from(tls::server_config(&is).unwrap())
        .unwrap();
    let addr = server(move |tx| async move {
        let ep = quinn::Endpoint::server(
            quinn::ServerConfig::with_crypto(Arc::new(scfg)),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
        tx.send(ep.local_addr().unwrap()).unwrap();
        let Some(incoming) = ep.accept().await else {
            return;
        };
        let Ok(conn) = incoming.await else { return };
        let Ok((w, r)) = conn.accept_bi().await else {
            return;
        };
        echo(Plain::new(r, w)).await
    });
    let (ccfg, _) = tls::client_config(&ic, ks.id()).unwrap();
    let ccfg = quinn::crypto::rustls::QuicClientConfig::try_from(ccfg).unwrap();
    let mut cep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    cep.set_default_client_config(quinn::ClientConfig::new(Arc::new(ccfg)));
    let conn = cep.connect(addr, tls::SERVER_NAME).unwrap().await.unwrap();
    let (w, r) = conn.open_bi().await.unwrap();
    case("plain quinn + codec", Plain::new(r, w))
}

fn main() {
    // `cargo test --benches` passes `--bench`-less args; run a tiny case then.
    let quick = std::env::args().any(|a| a == "--test");
    let n: usize = std::env::var("POR_RTT_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 50 } else { 5_000 });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    const ROUNDS: usize = 7;
    rt.block_on(async {
        println!(
            "{ROUNDS} interleaved rounds of {} sequential and {} pipelined requests per case, {BODY} B each way, loopback",
            n / ROUNDS,
            n * 4 / ROUNDS
        );
        let mut cases = vec![plain_tcp().await, plain_tls().await, por_tcp().await, plain_quic().await, por_quic().await];
        // POR_RTT_ONLY=<text> measures only the cases whose name contains it (for
        // profilers: callgrind counts instructions per case, repeatably).
        if let Ok(only) = std::env::var("POR_RTT_ONLY") {
            cases.retain(|c| c.name.contains(only.as_str()));
            for c in &mut cases {
                let r = (c.run)(n).await;
                println!("{}: {} sequential + {} pipelined requests", c.name, r.seq.len(), r.pipe.len());
            }
            return;
        }
        for c in &mut cases {
            (c.run)(20).await; // warm up
        }
        for _ in 0..ROUNDS {
            for c in &mut cases {
                let r = (c.run)(n / ROUNDS).await;
                c.seq_rps.push(r.seq.len() as f64 / r.seq_time.as_secs_f64());
                c.pipe_rps.push(r.pipe.len() as f64 / r.pipe_time.as_secs_f64());
                c.seq.extend(r.seq);
                c.pipe.extend(r.pipe);
            }
        }
        let results: Vec<(Figures, Figures)> = cases.iter().map(Case::result).collect();
        for (c, (seq, pipe)) in cases.iter().zip(&results) {
            println!(
                "{:<28} sequential: p50 {:>7.1} us  p99 {:>7.1} us  {:>8.0} req/s | {WINDOW} in flight: p50 {:>7.1} us  p99 {:>7.1} us  {:>8.0} req/s",
                c.name, seq.p50_us, seq.p99_us, seq.rps, pipe.p50_us, pipe.p99_us, pipe.rps
            );
        }
        println!("ratios (latency: lower is better, throughput: higher is better):");
        ratio("por TCP vs plain tokio TCP", &results[2], &results[0]);
        ratio("por TCP vs plain tokio-rustls (same crypto)", &results[2], &results[1]);
        ratio("por QUIC vs plain quinn", &results[4], &results[3]);
    });
}

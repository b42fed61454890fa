//! QUIC (quinn + rustls): one connection per neighbour, one unidirectional QUIC stream
//! per lane. Frames on a lane arrive in order; lanes do not block each other, so a
//! large or slow frame on one lane leaves the others flowing. Lane 0 (control) is sent
//! at a higher priority than the others, which share what is left round robin; each
//! lane's and the connection's receive windows are bounded by the configuration.
//!
//! `recv` polls every inbound lane itself, round robin (no reader tasks, no queue):
//! bytes are read only while the application asks for frames, so a slow application
//! pushes back on the peer through QUIC flow control, and each lane holds at most one
//! partial frame. At most [`MAX_STREAMS`] lanes per connection. Keep-alives keep a
//! quiet connection up; the application-level idle timeout still drops a peer that
//! sends no frames, and a lane stalled mid-frame is cut by the frame timeout.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex as StdMutex};

use bytes::{BufMut, Bytes};
use por_protocol::{Keypair, NodeId};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::CertificateDer;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::{mpsc, Mutex, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_util::io::poll_read_buf;
use tracing::debug;

use crate::frame::{self, FrameDecoder};
use crate::tls::{self, Identity};
use crate::{
    check_stream, Connection, Frame, Listener, Transport, TransportConfig, TransportError,
    MAX_STREAMS,
};

const READ_CHUNK: usize = 16 * 1024;

/// The QUIC transport of one node. Listening and dialling share one UDP endpoint.
#[derive(Clone, Debug)]
pub struct QuicTransport {
    identity: Arc<Identity>,
    config: Arc<TransportConfig>,
    server: quinn::ServerConfig,
    /// Stateless resets keyed by the node's own key, so they survive a restart: a
    /// restarted node answers its peers' packets on the connection it lost with a
    /// reset they accept, and they reconnect at once instead of after the idle
    /// timeout.
    endpoint_config: Arc<quinn::EndpointConfig>,
    endpoint: Arc<StdMutex<Option<quinn::Endpoint>>>,
}

fn quic_transport_config(
    cfg: &TransportConfig,
) -> Result<Arc<quinn::TransportConfig>, TransportError> {
    let mut t = quinn::TransportConfig::default();
    // Dead peers (no packets at all, keep-alives included) are dropped after three
    // missed keep-alives.
    let idle = cfg.keep_alive.saturating_mul(3).max(cfg.handshake_timeout);
    t.max_idle_timeout(Some(
        idle.try_into()
            .map_err(|_| TransportError::Tls("idle timeout out of range".into()))?,
    ));
    t.keep_alive_interval(Some(cfg.keep_alive));
    t.max_concurrent_uni_streams(MAX_STREAMS.into());
    t.max_concurrent_bidi_streams(0u32.into());
    // A lane may run a frame and a bit ahead of the reader; all lanes together, the
    // connection window (so many lanes cannot multiply what a peer may push at us).
    let frame = cfg.max_frame_len.saturating_add(frame::HEADER_LEN);
    let stream = cfg.stream_window.max(frame);
    let conn = cfg.connection_window.max(stream);
    let varint = |n: usize| {
        quinn::VarInt::from_u64(n as u64)
            .map_err(|_| TransportError::Tls(format!("window of {n} bytes out of range")))
    };
    t.stream_receive_window(varint(stream)?);
    t.receive_window(varint(conn)?);
    // What we send ahead of acknowledgement, across lanes: the peer's windows bound it
    // too, this keeps our own buffers at the same size.
    t.send_window(conn as u64);
    Ok(Arc::new(t))
}

impl QuicTransport {
    /// A transport proving `key`'s identity.
    pub fn new(key: &Keypair, config: TransportConfig) -> Result<QuicTransport, TransportError> {
        let identity = Arc::new(Identity::new(key)?);
        let crypto = QuicServerConfig::try_from(tls::server_config(&identity)?)
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(quic_transport_config(&config)?);
        // Both derived from the node's secret: a reset needs the key its tokens came
        // from, and is only sent for a connection id this endpoint recognises as one
        // it issued.
        let reset = por_protocol::crypto::Hash::tagged(b"por/v1/quic-stateless-reset", &key.seed());
        let cids = por_protocol::crypto::Hash::tagged(b"por/v1/quic-connection-ids", &key.seed());
        let mut cid_key = [0u8; 8];
        cid_key.copy_from_slice(&cids.0[..8]);
        let cid_key = u64::from_le_bytes(cid_key);
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &reset.0,
        )));
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        Ok(QuicTransport {
            identity,
            config: Arc::new(config),
            server,
            endpoint_config: Arc::new(endpoint_config),
            endpoint: Arc::new(StdMutex::new(None)),
        })
    }

    /// A UDP endpoint on `bind` with this node's endpoint config.
    fn endpoint(
        &self,
        server: Option<quinn::ServerConfig>,
        bind: SocketAddr,
    ) -> std::io::Result<quinn::Endpoint> {
        let socket = std::net::UdpSocket::bind(bind)?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| std::io::Error::other("no async runtime found"))?;
        quinn::Endpoint::new((*self.endpoint_config).clone(), server, socket, runtime)
    }

    fn client_endpoint(&self, remote: SocketAddr) -> Result<quinn::Endpoint, TransportError> {
        let mut slot = self.endpoint.lock().map_err(|_| TransportError::Closed)?;
        if let Some(ep) = slot.as_ref() {
            return Ok(ep.clone());
        }
        let bind: SocketAddr = if remote.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let ep = self.endpoint(None, bind)?;
        *slot = Some(ep.clone());
        Ok(ep)
    }
}

fn parse_addr(addr: &str) -> Result<SocketAddr, TransportError> {
    addr.parse().map_err(|e| TransportError::Address {
        addr: addr.to_string(),
        detail: format!("{e}"),
    })
}

fn peer_of(conn: &quinn::Connection) -> Result<NodeId, TransportError> {
    let any = conn
        .peer_identity()
        .ok_or_else(|| TransportError::Handshake("peer presented no certificate".into()))?;
    let certs = any
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| TransportError::Handshake("unexpected peer identity type".into()))?;
    let cert = certs
        .first()
        .ok_or_else(|| TransportError::Handshake("empty certificate chain".into()))?;
    tls::node_id_of(cert)
}

impl Transport for QuicTransport {
    type Conn = QuicConnection;
    type Listener = QuicListener;

    async fn listen(&self, addr: &str) -> Result<QuicListener, TransportError> {
        let sa = parse_addr(addr)?;
        let ep =
            self.endpoint(Some(self.server.clone()), sa)
                .map_err(|e| TransportError::Address {
                    addr: addr.to_string(),
                    detail: e.to_string(),
                })?;
        let local = ep.local_addr()?;
        if let Ok(mut slot) = self.endpoint.lock() {
            *slot = Some(ep.clone());
        }
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(accept_loop(ep, self.config.clone(), tx));
        Ok(QuicListener { local, rx, task })
    }

    async fn dial(&self, addr: &str, expected: NodeId) -> Result<QuicConnection, TransportError> {
        let sa = parse_addr(addr)?;
        let ep = self.client_endpoint(sa)?;
        let (rcfg, seen) = tls::client_config(&self.identity, expected)?;
        let crypto =
            QuicClientConfig::try_from(rcfg).map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
        cfg.transport_config(quic_transport_config(&self.config)?);
        let connecting =
            ep.connect_with(cfg, sa, tls::SERVER_NAME)
                .map_err(|e| TransportError::Dial {
                    addr: addr.to_string(),
                    detail: e.to_string(),
                })?;
        let conn = match timeout(self.config.handshake_timeout, connecting).await {
            Err(_) => return Err(TransportError::Timeout("handshake")),
            Ok(Err(e)) => return Err(tls::dial_error(expected, &seen, e)),
            Ok(Ok(c)) => c,
        };
        let got = peer_of(&conn)?;
        if got != expected {
            conn.close(1u32.into(), b"wrong identity");
            return Err(TransportError::WrongIdentity { expected, got });
        }
        Ok(QuicConnection::new(conn, got, self.config.clone()))
    }
}

async fn accept_loop(
    ep: quinn::Endpoint,
    config: Arc<TransportConfig>,
    tx: mpsc::Sender<Result<QuicConnection, TransportError>>,
) {
    let slots = Arc::new(Semaphore::new(config.max_handshakes));
    while let Some(incoming) = ep.accept().await {
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            incoming.refuse();
            continue;
        };
        let (config, tx) = (config.clone(), tx.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let from = incoming.remote_address();
            let conn = match timeout(config.handshake_timeout, incoming).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    debug!(%from, error = %e, "inbound quic handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%from, "inbound quic handshake timed out");
                    return;
                }
            };
            match peer_of(&conn) {
                Ok(peer) => {
                    let _ = tx.send(Ok(QuicConnection::new(conn, peer, config))).await;
                }
                Err(e) => {
                    debug!(%from, error = %e, "inbound peer without a node key");
                    conn.close(1u32.into(), b"no node key");
                }
            }
        });
    }
}

/// Accepts QUIC connections.
#[derive(Debug)]
pub struct QuicListener {
    local: SocketAddr,
    rx: mpsc::Receiver<Result<QuicConnection, TransportError>>,
    task: JoinHandle<()>,
}

impl Drop for QuicListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener for QuicListener {
    type Conn = QuicConnection;

    fn local_addr(&self) -> String {
        self.local.to_string()
    }

    async fn accept(&mut self) -> Result<QuicConnection, TransportError> {
        self.rx.recv().await.unwrap_or(Err(TransportError::Closed))
    }
}

type Lane = Arc<Mutex<quinn::SendStream>>;
type AcceptUni =
    Pin<Box<dyn Future<Output = Result<quinn::RecvStream, quinn::ConnectionError>> + Send>>;

/// One inbound lane: its stream, its decoder, and when its current frame started.
struct LaneIn {
    recv: quinn::RecvStream,
    dec: FrameDecoder,
    started: Option<Instant>,
}

/// Everything `recv` polls: the lanes, the acceptor of new ones, and the deadline.
struct Inbound {
    conn: quinn::Connection,
    accept: AcceptUni,
    lanes: Vec<LaneIn>,
    next: usize,
    last_frame: Instant,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Inbound({} lanes)", self.lanes.len())
    }
}

fn accept_uni(conn: &quinn::Connection) -> AcceptUni {
    let conn = conn.clone();
    Box::pin(async move { conn.accept_uni().await })
}

impl Inbound {
    /// Polls every lane (round robin, so no lane starves another) and the acceptor.
    /// Bytes are read only while the application asks for frames, so a slow reader
    /// pushes back on the peer through QUIC flow control, and each lane holds at most
    /// one partial frame.
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
        config: &TransportConfig,
    ) -> Poll<Result<(u32, Bytes), TransportError>> {
        loop {
            let mut progressed = false;
            let n = self.lanes.len();
            let mut i = 0;
            while i < n.min(self.lanes.len()) {
                let idx = (self.next + i) % self.lanes.len();
                let lane = &mut self.lanes[idx];
                match lane.dec.next_frame() {
                    Err(e) => return Poll::Ready(Err(e)),
                    Ok(Some(frame)) => {
                        let now = Instant::now();
                        lane.started = lane.dec.in_frame().then_some(now);
                        self.next = idx.wrapping_add(1);
                        self.last_frame = now;
                        return Poll::Ready(Ok(frame));
                    }
                    Ok(None) => {}
                }
                let limit = lane.dec.read_limit(READ_CHUNK);
                let mut buf = lane.dec.reserve(READ_CHUNK).limit(limit);
                match poll_read_buf(Pin::new(&mut lane.recv), cx, &mut buf) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        // The peer finished or reset this lane.
                        self.lanes.swap_remove(idx);
                        progressed = true;
                        continue;
                    }
                    Poll::Ready(Ok(_)) => {
                        if lane.started.is_none() {
                            lane.started = Some(Instant::now());
                        }
                        progressed = true;
                        continue;
                    }
                    Poll::Pending => {}
                }
                i += 1;
            }
            match self.accept.as_mut().poll(cx) {
                Poll::Ready(Ok(recv)) => {
                    if self.lanes.len() >= MAX_STREAMS as usize {
                        return Poll::Ready(Err(TransportError::BadStream(MAX_STREAMS)));
                    }
                    self.lanes.push(LaneIn {
                        recv,
                        dec: FrameDecoder::new(config.max_frame_len),
                        started: None,
                    });
                    self.accept = accept_uni(&self.conn);
                    progressed = true;
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Err(TransportError::Closed)),
                Poll::Pending => {}
            }
            if !progressed {
                break;
            }
        }
        // Deadlines: the idle timeout, and the frame timeout of any lane mid-frame.
        let idle_at = self.last_frame + config.idle_timeout;
        let stalled_at = self
            .lanes
            .iter()
            .filter_map(|l| l.started)
            .min()
            .map(|t| t + config.frame_timeout);
        let (at, what) = match stalled_at {
            Some(s) if s < idle_at => (s, "frame"),
            _ => (idle_at, "idle"),
        };
        if self.timer.deadline() != at {
            self.timer.as_mut().reset(at);
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(TransportError::Timeout(what)));
        }
        Poll::Pending
    }
}

/// One authenticated QUIC connection.
#[derive(Debug)]
pub struct QuicConnection {
    peer: NodeId,
    conn: quinn::Connection,
    lanes: StdMutex<HashMap<u32, Lane>>,
    inbound: Mutex<Inbound>,
    config: Arc<TransportConfig>,
}

impl QuicConnection {
    fn new(conn: quinn::Connection, peer: NodeId, config: Arc<TransportConfig>) -> QuicConnection {
        let now = Instant::now();
        let inbound = Inbound {
            conn: conn.clone(),
            accept: accept_uni(&conn),
            lanes: Vec::new(),
            next: 0,
            last_frame: now,
            timer: Box::pin(tokio::time::sleep_until(now + config.idle_timeout)),
        };
        QuicConnection {
            peer,
            conn,
            lanes: StdMutex::new(HashMap::new()),
            inbound: Mutex::new(inbound),
            config,
        }
    }

    async fn lane(&self, stream: u32) -> Result<Lane, TransportError> {
        if let Some(l) = self
            .lanes
            .lock()
            .map_err(|_| TransportError::Closed)?
            .get(&stream)
        {
            return Ok(l.clone());
        }
        let opened = self
            .conn
            .open_uni()
            .await
            .map_err(|_| TransportError::Closed)?;
        // Control first: quinn sends a higher-priority stream's data before any other's.
        let priority = if stream == 0 { 1 } else { 0 };
        opened
            .set_priority(priority)
            .map_err(|_| TransportError::Closed)?;
        let mut lanes = self.lanes.lock().map_err(|_| TransportError::Closed)?;
        // Another sender may have opened the lane meanwhile: use theirs (ours stays unused
        // and is dropped, which resets it harmlessly).
        Ok(lanes
            .entry(stream)
            .or_insert_with(|| Arc::new(Mutex::new(opened)))
            .clone())
    }
}

impl Drop for QuicConnection {
    fn drop(&mut self) {
        self.conn.close(0u32.into(), b"dropped");
    }
}

impl Connection for QuicConnection {
    fn peer(&self) -> NodeId {
        self.peer
    }

    async fn send_frames(&self, stream: u32, frames: Vec<Frame>) -> Result<(), TransportError> {
        check_stream(stream)?;
        let mut parts = frame::encode_parts(stream, frames, self.config.max_frame_len)?;
        if self.conn.close_reason().is_some() {
            return Err(TransportError::Closed);
        }
        let lane = self.lane(stream).await?;
        let mut lane = lane.lock().await;
        // The frame timeout bounds how long each part (a large frame, or a buffer of
        // small ones) may wait for the peer to take it, not a whole burst: a peer that
        // reads steadily is flow control at work, one that stops is cut off.
        for part in parts.iter_mut() {
            match timeout(
                self.config.frame_timeout,
                lane.write_all_chunks(std::slice::from_mut(part)),
            )
            .await
            {
                Err(_) => {
                    self.close();
                    return Err(TransportError::Timeout("frame"));
                }
                Ok(Err(_)) => return Err(TransportError::Closed),
                Ok(Ok(())) => {}
            }
        }
        Ok(())
    }

    async fn recv(&self) -> Result<(u32, Bytes), TransportError> {
        let mut inbound = self.inbound.lock().await;
        let r = std::future::poll_fn(|cx| inbound.poll_frame(cx, &self.config)).await;
        if r.is_err() {
            self.close();
        }
        r
    }

    fn close(&self) {
        self.conn.close(0u32.into(), b"closed");
    }
}

//! QUIC (quinn + rustls): one connection per neighbour, one unidirectional QUIC stream
//! per lane. Frames on a lane arrive in order; lanes do not block each other, so a
//! large or slow frame on one lane leaves the others flowing.
//!
//! Inbound lanes are read by one task each into a queue bounded in bytes
//! (`queue_bytes`), which pushes back on the sender through QUIC flow control. At most
//! [`MAX_STREAMS`] lanes per connection. Keep-alives keep a quiet connection up; the
//! application-level idle timeout still drops a peer that sends no frames.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex as StdMutex};

use bytes::{Bytes, BytesMut};
use por_protocol::{Keypair, NodeId};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::CertificateDer;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, Mutex, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tracing::debug;

use crate::frame::{self, FrameDecoder};
use crate::tls::{self, Identity};
use crate::{
    check_stream, ByteBudget, Connection, Listener, Queued, Transport, TransportConfig, TransportError,
    MAX_STREAMS,
};

const READ_CHUNK: usize = 64 * 1024;

/// The QUIC transport of one node. Listening and dialling share one UDP endpoint.
#[derive(Clone, Debug)]
pub struct QuicTransport {
    identity: Arc<Identity>,
    config: Arc<TransportConfig>,
    server: quinn::ServerConfig,
    endpoint: Arc<StdMutex<Option<quinn::Endpoint>>>,
}

fn quic_transport_config(cfg: &TransportConfig) -> Result<Arc<quinn::TransportConfig>, TransportError> {
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
    let window = u32::try_from(cfg.max_frame_len.saturating_add(frame::HEADER_LEN).saturating_mul(2)).unwrap_or(u32::MAX);
    t.stream_receive_window(window.into());
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
        Ok(QuicTransport {
            identity,
            config: Arc::new(config),
            server,
            endpoint: Arc::new(StdMutex::new(None)),
        })
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
        let ep = quinn::Endpoint::client(bind)?;
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
        let ep = quinn::Endpoint::server(self.server.clone(), sa).map_err(|e| TransportError::Address {
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
        let crypto = QuicClientConfig::try_from(rcfg).map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
        cfg.transport_config(quic_transport_config(&self.config)?);
        let connecting = ep
            .connect_with(cfg, sa, tls::SERVER_NAME)
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

/// One authenticated QUIC connection.
#[derive(Debug)]
pub struct QuicConnection {
    peer: NodeId,
    conn: quinn::Connection,
    lanes: StdMutex<HashMap<u32, Lane>>,
    incoming: Mutex<mpsc::Receiver<Result<Queued, TransportError>>>,
    config: Arc<TransportConfig>,
    reader: JoinHandle<()>,
}

impl QuicConnection {
    fn new(conn: quinn::Connection, peer: NodeId, config: Arc<TransportConfig>) -> QuicConnection {
        let (tx, rx) = mpsc::channel(4096);
        let budget = ByteBudget::new(config.queue_bytes);
        let reader = tokio::spawn(accept_lanes(conn.clone(), config.clone(), budget, tx));
        QuicConnection {
            peer,
            conn,
            lanes: StdMutex::new(HashMap::new()),
            incoming: Mutex::new(rx),
            config,
            reader,
        }
    }

    async fn lane(&self, stream: u32) -> Result<Lane, TransportError> {
        if let Some(l) = self.lanes.lock().map_err(|_| TransportError::Closed)?.get(&stream) {
            return Ok(l.clone());
        }
        let opened = self.conn.open_uni().await.map_err(|_| TransportError::Closed)?;
        let mut lanes = self.lanes.lock().map_err(|_| TransportError::Closed)?;
        // Another sender may have opened the lane meanwhile: use theirs (ours stays unused
        // and is dropped, which resets it harmlessly).
        Ok(lanes
            .entry(stream)
            .or_insert_with(|| Arc::new(Mutex::new(opened)))
            .clone())
    }
}

/// Accepts the peer's lanes and reads each in its own task.
async fn accept_lanes(
    conn: quinn::Connection,
    config: Arc<TransportConfig>,
    budget: ByteBudget,
    tx: mpsc::Sender<Result<Queued, TransportError>>,
) {
    loop {
        match conn.accept_uni().await {
            Ok(recv) => {
                tokio::spawn(read_lane(recv, conn.clone(), config.clone(), budget.clone(), tx.clone()));
            }
            Err(_) => {
                let _ = tx.send(Err(TransportError::Closed)).await;
                return;
            }
        }
    }
}

async fn read_lane(
    mut recv: quinn::RecvStream,
    conn: quinn::Connection,
    config: Arc<TransportConfig>,
    budget: ByteBudget,
    tx: mpsc::Sender<Result<Queued, TransportError>>,
) {
    let mut dec = FrameDecoder::new(config.max_frame_len);
    loop {
        loop {
            match dec.next_frame() {
                Ok(Some((stream, frame))) => {
                    let Ok(permit) = budget.take(frame.len()).await else {
                        return;
                    };
                    if tx.send(Ok((stream, frame, permit))).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // Report first: closing wakes the lane acceptor, whose `Closed`
                    // must not overtake the reason.
                    let _ = tx.send(Err(e)).await;
                    conn.close(2u32.into(), b"bad frame");
                    return;
                }
            }
        }
        let want = dec.want(READ_CHUNK);
        let buf: &mut BytesMut = dec.buffer();
        buf.reserve(want);
        // A lane may sit idle between frames for as long as it likes; once a frame has
        // started it must finish within the frame timeout.
        let read = if dec.in_frame() {
            match timeout(config.frame_timeout, recv.read_buf(dec.buffer())).await {
                Ok(r) => r,
                Err(_) => {
                    let _ = tx.send(Err(TransportError::Timeout("frame"))).await;
                    conn.close(3u32.into(), b"frame timeout");
                    return;
                }
            }
        } else {
            recv.read_buf(dec.buffer()).await
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

impl Drop for QuicConnection {
    fn drop(&mut self) {
        self.reader.abort();
        self.conn.close(0u32.into(), b"dropped");
    }
}

impl Connection for QuicConnection {
    fn peer(&self) -> NodeId {
        self.peer
    }

    async fn send(&self, stream: u32, frame: Bytes) -> Result<(), TransportError> {
        check_stream(stream)?;
        let mut buf = BytesMut::new();
        frame::encode(stream, &frame, self.config.max_frame_len, &mut buf)?;
        if self.conn.close_reason().is_some() {
            return Err(TransportError::Closed);
        }
        let lane = self.lane(stream).await?;
        let mut lane = lane.lock().await;
        match timeout(self.config.frame_timeout, lane.write_all(&buf)).await {
            Err(_) => {
                self.close();
                Err(TransportError::Timeout("frame"))
            }
            Ok(Err(_)) => Err(TransportError::Closed),
            Ok(Ok(())) => Ok(()),
        }
    }

    async fn recv(&self) -> Result<(u32, Bytes), TransportError> {
        let mut rx = self.incoming.lock().await;
        match timeout(self.config.idle_timeout, rx.recv()).await {
            Err(_) => {
                self.close();
                Err(TransportError::Timeout("idle"))
            }
            Ok(None) => Err(TransportError::Closed),
            Ok(Some(Err(e))) => {
                self.close();
                Err(e)
            }
            Ok(Some(Ok((s, f, _permit)))) => Ok((s, f)),
        }
    }

    fn close(&self) {
        self.conn.close(0u32.into(), b"closed");
    }
}

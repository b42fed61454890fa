//! TCP with TLS 1.3: one connection per neighbour, frames `len | stream | payload`.
//!
//! Sends write straight to the socket under a lock (no queue: a slow peer pushes back
//! through TCP flow control); receives read straight from it through a
//! [`FrameDecoder`]. Inbound handshakes run in their own tasks, at most
//! `max_handshakes` at once and each within `handshake_timeout`, so a slowloris peer
//! holds one small task for a bounded time and cannot block the accept loop.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use por_protocol::{Keypair, NodeId};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::frame::{self, FrameDecoder};
use crate::tls::{self, Identity};
use crate::{check_stream, Connection, Listener, Transport, TransportConfig, TransportError};

/// Room made for each read.
const READ_CHUNK: usize = 16 * 1024;

/// The TCP transport of one node.
#[derive(Clone)]
pub struct TcpTransport {
    identity: Arc<Identity>,
    config: Arc<TransportConfig>,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TcpTransport({})", self.identity.id())
    }
}

impl TcpTransport {
    /// A transport proving `key`'s identity.
    pub fn new(key: &Keypair, config: TransportConfig) -> Result<TcpTransport, TransportError> {
        let identity = Arc::new(Identity::new(key)?);
        let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(&identity)?));
        Ok(TcpTransport {
            identity,
            config: Arc::new(config),
            acceptor,
        })
    }
}

fn parse_addr(addr: &str) -> Result<SocketAddr, TransportError> {
    addr.parse().map_err(|e| TransportError::Address {
        addr: addr.to_string(),
        detail: format!("{e}"),
    })
}

impl Transport for TcpTransport {
    type Conn = TcpConnection;
    type Listener = TcpListener;

    async fn listen(&self, addr: &str) -> Result<TcpListener, TransportError> {
        let sock = tokio::net::TcpListener::bind(parse_addr(addr)?)
            .await
            .map_err(|e| TransportError::Address {
                addr: addr.to_string(),
                detail: e.to_string(),
            })?;
        let local = sock.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(accept_loop(
            sock,
            self.acceptor.clone(),
            self.config.clone(),
            tx,
        ));
        Ok(TcpListener { local, rx, task })
    }

    async fn dial(&self, addr: &str, expected: NodeId) -> Result<TcpConnection, TransportError> {
        let sa = parse_addr(addr)?;
        let (cfg, seen) = tls::client_config(&self.identity, expected)?;
        let connector = TlsConnector::from(Arc::new(cfg));
        let name = ServerName::try_from(tls::SERVER_NAME)
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let handshake = async {
            let sock = TcpStream::connect(sa)
                .await
                .map_err(|e| TransportError::Dial {
                    addr: addr.to_string(),
                    detail: e.to_string(),
                })?;
            sock.set_nodelay(true)?;
            connector
                .connect(name, sock)
                .await
                .map_err(|e| tls::dial_error(expected, &seen, e))
        };
        let stream = timeout(self.config.handshake_timeout, handshake)
            .await
            .map_err(|_| TransportError::Timeout("handshake"))??;
        Ok(TcpConnection::new(
            TlsStream::from(stream),
            expected,
            self.config.clone(),
        ))
    }
}

async fn accept_loop(
    sock: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    config: Arc<TransportConfig>,
    tx: mpsc::Sender<Result<TcpConnection, TransportError>>,
) {
    let slots = Arc::new(Semaphore::new(config.max_handshakes));
    loop {
        let (stream, from) = match sock.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: report, back off, go on.
                warn!(error = %e, "tcp accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!(%from, "too many handshakes in progress; dropping connection");
            continue;
        };
        let (acceptor, config, tx) = (acceptor.clone(), config.clone(), tx.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if stream.set_nodelay(true).is_err() {
                return;
            }
            let done = timeout(config.handshake_timeout, acceptor.accept(stream)).await;
            let tls = match done {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    debug!(%from, error = %e, "inbound tls handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%from, "inbound handshake timed out");
                    return;
                }
            };
            let peer = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                Some(cert) => match tls::node_id_of(cert) {
                    Ok(id) => id,
                    Err(e) => {
                        debug!(%from, error = %e, "inbound peer without a node key");
                        return;
                    }
                },
                None => return,
            };
            let conn = TcpConnection::new(TlsStream::from(tls), peer, config);
            let _ = tx.send(Ok(conn)).await;
        });
    }
}

/// Accepts TCP connections (authenticated in the background).
#[derive(Debug)]
pub struct TcpListener {
    local: SocketAddr,
    rx: mpsc::Receiver<Result<TcpConnection, TransportError>>,
    task: JoinHandle<()>,
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener for TcpListener {
    type Conn = TcpConnection;

    fn local_addr(&self) -> String {
        self.local.to_string()
    }

    async fn accept(&mut self) -> Result<TcpConnection, TransportError> {
        self.rx.recv().await.unwrap_or(Err(TransportError::Closed))
    }
}

type Stream = TlsStream<TcpStream>;

/// One authenticated TCP connection.
#[derive(Debug)]
pub struct TcpConnection {
    peer: NodeId,
    reader: Mutex<(ReadHalf<Stream>, FrameDecoder)>,
    writer: Arc<Mutex<WriteHalf<Stream>>>,
    config: Arc<TransportConfig>,
    closed: CancellationToken,
}

impl TcpConnection {
    fn new(stream: Stream, peer: NodeId, config: Arc<TransportConfig>) -> TcpConnection {
        let (r, w) = tokio::io::split(stream);
        TcpConnection {
            peer,
            reader: Mutex::new((r, FrameDecoder::new(config.max_frame_len))),
            writer: Arc::new(Mutex::new(w)),
            config,
            closed: CancellationToken::new(),
        }
    }

    async fn read_frame(&self) -> Result<(u32, Bytes), TransportError> {
        let mut guard = self.reader.lock().await;
        let (rd, dec) = &mut *guard;
        loop {
            if let Some(f) = dec.next_frame()? {
                return Ok(f);
            }
            let (limit, what) = if dec.in_frame() {
                (self.config.frame_timeout, "frame")
            } else {
                (self.config.idle_timeout, "idle")
            };
            let buf = dec.reserve(READ_CHUNK);
            let read = tokio::select! {
                r = timeout(limit, rd.read_buf(buf)) => r,
                () = self.closed.cancelled() => return Err(TransportError::Closed),
            };
            match read {
                Err(_) => return Err(TransportError::Timeout(what)),
                Ok(Ok(0)) => return Err(TransportError::Closed),
                Ok(Ok(_)) => {}
                Ok(Err(e)) if is_disconnect(&e) => return Err(TransportError::Closed),
                Ok(Err(e)) => return Err(TransportError::Io(e)),
            }
        }
    }
}

fn is_disconnect(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::UnexpectedEof
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::BrokenPipe
            | K::NotConnected
    )
}

impl Connection for TcpConnection {
    fn peer(&self) -> NodeId {
        self.peer
    }

    async fn send(&self, stream: u32, frame: Bytes) -> Result<(), TransportError> {
        self.send_all(stream, vec![frame]).await
    }

    async fn send_all(&self, stream: u32, frames: Vec<Bytes>) -> Result<(), TransportError> {
        check_stream(stream)?;
        if self.closed.is_cancelled() {
            return Err(TransportError::Closed);
        }
        // Small frames are coalesced into one write; a large payload follows its
        // header without being copied (TLS encrypts it straight from the frame).
        let parts = frame::encode_parts(stream, frames, self.config.max_frame_len)?;
        let mut w = self.writer.lock().await;
        let write = async {
            for part in &parts {
                w.write_all(part).await?;
            }
            w.flush().await
        };
        match timeout(self.config.frame_timeout, write).await {
            Err(_) => {
                self.close();
                Err(TransportError::Timeout("frame"))
            }
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if is_disconnect(&e) => Err(TransportError::Closed),
            Ok(Err(e)) => Err(TransportError::Io(e)),
        }
    }

    async fn recv(&self) -> Result<(u32, Bytes), TransportError> {
        let r = self.read_frame().await;
        if r.is_err() {
            self.close();
        }
        r
    }

    fn close(&self) {
        if self.closed.is_cancelled() {
            return;
        }
        self.closed.cancel();
        let writer = self.writer.clone();
        // Send close_notify so the peer sees an orderly end, then drop the socket.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let mut w = writer.lock().await;
                let _ = timeout(std::time::Duration::from_secs(1), w.shutdown()).await;
            });
        }
    }
}

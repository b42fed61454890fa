//! TCP with TLS 1.3: one connection per neighbour, frames `len | stream | payload`.
//!
//! Lanes share the one byte stream by interleaving: a writer task per connection
//! takes what senders queued through a [`Scheduler`] (control lane first, the others
//! round robin, large frames cut into chunks), so a MiB frame on one lane holds a
//! frame on another back by at most one chunk. A send completes once its frames are
//! written; senders wait meanwhile, so what is queued is bounded by what they hold
//! (a slow peer pushes back through TCP flow control). The socket's unsent queue is
//! kept short (`TCP_NOTSENT_LOWAT`), so the kernel does not hold megabytes of bulk
//! chunks ahead of a control frame either. Receives read straight from the socket
//! through a [`FrameDecoder`] and a [`Reassembler`], which bounds the bytes a peer
//! may leave half-sent. Inbound handshakes run in their own tasks, at most
//! `max_handshakes` at once and each within `handshake_timeout`, so a slowloris peer
//! holds one small task for a bounded time and cannot block the accept loop.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes};
use por_protocol::{Keypair, NodeId};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Mutex, Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::frame::FrameDecoder;
use crate::sched::{Reassembler, Scheduler};
use crate::tls::{self, Identity};
use crate::{Connection, Frame, Listener, Transport, TransportConfig, TransportError};

/// Room made for each read: one whole chunk of a large frame, header and all (a read
/// stops where the frame under way ends: `FrameDecoder::read_limit`).
const READ_CHUNK: usize = crate::sched::CHUNK + crate::frame::HEADER_LEN;

/// Most bytes the writer hands TLS at once (then it looks at the queues again).
const WRITE_BATCH: usize = 64 * 1024;

/// Unsent bytes the kernel may hold before the socket stops taking more: a control
/// frame queued now waits behind at most this much on our side of the wire.
const NOTSENT_LOWAT: u32 = 128 * 1024;

/// Keeps the kernel's unsent queue short (see [`NOTSENT_LOWAT`]). Best effort: a
/// kernel without the option still works, with more bulk ahead of control.
fn short_send_queue(sock: &TcpStream) {
    if let Err(e) = socket2::SockRef::from(sock).set_tcp_notsent_lowat(NOTSENT_LOWAT) {
        debug!(error = %e, "TCP_NOTSENT_LOWAT not available");
    }
}

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
            short_send_queue(&sock);
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
            short_send_queue(&stream);
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

/// What a sender learns once its frames are written (or the writer gave up).
type Done = oneshot::Sender<()>;

/// What senders share with the connection's writer task.
#[derive(Debug)]
struct Outbound {
    queue: std::sync::Mutex<Scheduler<Done>>,
    wake: Notify,
}

/// The reading half: the socket, its frame decoder and the chunks' reassembly.
#[derive(Debug)]
struct Inbound {
    read: ReadHalf<Stream>,
    dec: FrameDecoder,
    parts: Reassembler<Instant>,
}

/// One authenticated TCP connection.
#[derive(Debug)]
pub struct TcpConnection {
    peer: NodeId,
    reader: Mutex<Inbound>,
    out: Arc<Outbound>,
    config: Arc<TransportConfig>,
    closed: CancellationToken,
}

impl TcpConnection {
    fn new(stream: Stream, peer: NodeId, config: Arc<TransportConfig>) -> TcpConnection {
        let (r, w) = tokio::io::split(stream);
        let out = Arc::new(Outbound {
            queue: std::sync::Mutex::new(Scheduler::new(
                config.max_frame_len,
                config.max_partial_bytes,
            )),
            wake: Notify::new(),
        });
        let closed = CancellationToken::new();
        tokio::spawn(write_loop(w, out.clone(), closed.clone(), config.clone()));
        TcpConnection {
            peer,
            reader: Mutex::new(Inbound {
                read: r,
                dec: FrameDecoder::new(config.max_frame_len),
                parts: Reassembler::new(config.max_frame_len, config.max_partial_bytes),
            }),
            out,
            config,
            closed,
        }
    }

    async fn read_frame(&self) -> Result<(u32, Bytes), TransportError> {
        let mut guard = self.reader.lock().await;
        let Inbound { read, dec, parts } = &mut *guard;
        loop {
            while let Some((word, payload)) = dec.next_frame()? {
                if let Some(frame) = parts.push(word, payload, Instant::now())? {
                    return Ok(frame);
                }
            }
            // A frame under way, whole or in chunks, must complete within the frame
            // timeout of its start; otherwise the peer must say something within the
            // idle timeout.
            let (deadline, what) = match parts.oldest() {
                Some(t) => (t + self.config.frame_timeout, "frame"),
                None if dec.in_frame() => (Instant::now() + self.config.frame_timeout, "frame"),
                None => (Instant::now() + self.config.idle_timeout, "idle"),
            };
            let limit = dec.read_limit(READ_CHUNK);
            let mut buf = dec.reserve(READ_CHUNK).limit(limit);
            let read = tokio::select! {
                r = tokio::time::timeout_at(deadline, read.read_buf(&mut buf)) => r,
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

impl Drop for TcpConnection {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

/// The connection's writer: batches of chunks from the scheduler to the socket until
/// the connection closes; then an orderly TLS close. A write that fails or stalls past
/// the frame timeout closes the connection (every waiting sender then sees it closed).
async fn write_loop(
    mut w: WriteHalf<Stream>,
    out: Arc<Outbound>,
    closed: CancellationToken,
    config: Arc<TransportConfig>,
) {
    loop {
        let batch = match out.queue.lock() {
            Ok(mut q) => q.next_batch(WRITE_BATCH),
            Err(_) => break,
        };
        if batch.parts.is_empty() {
            tokio::select! {
                () = out.wake.notified() => continue,
                () = closed.cancelled() => break,
            }
        }
        let mut parts = Parts::new(batch.parts);
        let write = async {
            // Vectored: TLS seals the parts into records together, rather than a
            // record (and its tag) per part.
            w.write_all_buf(&mut parts).await?;
            w.flush().await
        };
        let wrote = tokio::select! {
            r = timeout(config.frame_timeout, write) => r,
            () = closed.cancelled() => break,
        };
        match wrote {
            Ok(Ok(())) => {
                for done in batch.done {
                    let _ = done.send(());
                }
            }
            Ok(Err(e)) => {
                debug!(error = %e, "tcp write failed");
                closed.cancel();
                break;
            }
            Err(_) => {
                debug!("tcp write stalled past the frame timeout");
                closed.cancel();
                break;
            }
        }
    }
    // Waiting senders see their completions dropped: the connection is closed.
    if let Ok(mut q) = out.queue.lock() {
        q.clear();
    }
    // Send close_notify so the peer sees an orderly end, then drop the socket.
    let _ = timeout(std::time::Duration::from_secs(1), w.shutdown()).await;
}

/// A batch's parts as one [`Buf`], so a write takes as many of them as it can at once.
/// No part held is empty.
struct Parts(VecDeque<Bytes>);

impl Parts {
    fn new(parts: Vec<Bytes>) -> Parts {
        Parts(parts.into_iter().filter(|p| !p.is_empty()).collect())
    }
}

impl Buf for Parts {
    fn remaining(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    fn chunk(&self) -> &[u8] {
        self.0.front().map_or(&[], |b| b.as_ref())
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [std::io::IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, part) in dst.iter_mut().zip(&self.0) {
            *slot = std::io::IoSlice::new(part);
            n += 1;
        }
        n
    }

    fn advance(&mut self, mut cnt: usize) {
        while cnt > 0 {
            let Some(front) = self.0.front_mut() else {
                return;
            };
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.0.pop_front();
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

    async fn send_frames(&self, stream: u32, frames: Vec<Frame>) -> Result<(), TransportError> {
        if self.closed.is_cancelled() {
            return Err(TransportError::Closed);
        }
        let (tx, rx) = oneshot::channel();
        // Frames are written in the writer's own time, interleaved with other lanes';
        // the frame timeout bounds how long each may wait for the peer (a burst of
        // many frames gets that much per frame, not for all of them).
        let count = u32::try_from(frames.len().max(1)).unwrap_or(u32::MAX);
        let allowed = self.config.frame_timeout.saturating_mul(count);
        self.out
            .queue
            .lock()
            .map_err(|_| TransportError::Closed)?
            .push(stream, frames, tx)?;
        self.out.wake.notify_one();
        match timeout(allowed, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(TransportError::Closed),
            Err(_) => {
                self.close();
                Err(TransportError::Timeout("frame"))
            }
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
        // The writer sees it, sends close_notify and drops the socket.
        self.closed.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_of_parts_is_written_whole_and_in_order_by_short_vectored_writes() {
        // A writer that takes at most 5 bytes of the first slices it is given: every
        // write stops somewhere inside a part.
        struct Trickle(Vec<u8>);
        impl tokio::io::AsyncWrite for Trickle {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                let n = buf.len().min(5);
                self.0.extend_from_slice(&buf[..n]);
                std::task::Poll::Ready(Ok(n))
            }
            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                let mut left = 5;
                for b in bufs {
                    let n = b.len().min(left);
                    self.0.extend_from_slice(&b[..n]);
                    left -= n;
                }
                std::task::Poll::Ready(Ok(5 - left))
            }
            fn is_write_vectored(&self) -> bool {
                true
            }
            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
        }
        let parts: Vec<Bytes> = ["ab", "", "cdefghi", "j", "klmnopqrstu"]
            .iter()
            .map(|s| Bytes::from_static(s.as_bytes()))
            .collect();
        let mut buf = Parts::new(parts);
        assert_eq!(buf.remaining(), 21);
        let mut w = Trickle(Vec::new());
        w.write_all_buf(&mut buf).await.unwrap();
        assert_eq!(w.0, b"abcdefghijklmnopqrstu");
        assert_eq!(buf.remaining(), 0);
        assert!(buf.chunk().is_empty());
    }
}

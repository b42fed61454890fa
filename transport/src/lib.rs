//! # por-transport
//!
//! Authenticated, length-bounded frames between por nodes. It knows nothing of
//! payments: a frame is opaque bytes on a numbered *stream* (a lane) to an identified
//! peer. Three interchangeable implementations:
//!
//! - [`tcp`]: tokio + TLS 1.3 (tokio-rustls), one connection per neighbour, frames
//!   `len | stream | payload` multiplexed over it, large ones cut into chunks that
//!   interleave between lanes ([`sched`]: control lane first, a fair share for the
//!   rest, a bound on what a peer may leave half-sent);
//! - [`quic`]: quinn + rustls, one QUIC unidirectional stream per lane, so a slow or
//!   large frame on one lane does not hold back others (lane 0 at a higher priority;
//!   stream and connection windows configured);
//! - [`mem`]: in-process channels, for tests.
//!
//! [`shaped::Shaped`] wraps any connection and delays every frame it sends by a fixed
//! one-way latency (the kernel here has no netem).
//!
//! Both network transports bind the connection to the peer's ed25519 node key
//! ([`tls`]): a peer presenting another key than the one dialled is refused with
//! [`TransportError::WrongIdentity`], and [`Connection::peer`] is the verified identity.
//!
//! Guarantees every implementation passes in `tests/conformance.rs`: frames arrive
//! intact and in order per stream up to [`TransportConfig::max_frame_len`]; a long
//! burst on one lane does not hold back frames on another; oversized
//! frames are refused; a disconnect is seen by both sides; idle, half-open and
//! slowloris peers are cut off by timeouts with bounded memory; queues are bounded.
//!
//! Async trait methods are not object-safe, so the runtime choice is an enum:
//! [`AnyTransport`], [`AnyListener`], [`AnyConnection`].
#![allow(clippy::manual_async_fn)]

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use por_protocol::NodeId;

pub use parts::Frame;

pub mod frame;
pub mod mem;
pub mod parts;
pub mod pool;
pub mod quic;
pub mod sched;
pub mod shaped;
pub mod tcp;
pub mod tls;

/// Highest lane number a sender may use (lanes are long-lived; keep them few).
pub const MAX_STREAMS: u32 = 64;

/// Everything that can go wrong on a transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// An I/O error on the socket.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Could not reach the address.
    #[error("dial {addr}: {detail}")]
    Dial {
        /// The address dialled.
        addr: String,
        /// Why.
        detail: String,
    },
    /// The TLS or QUIC handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// TLS configuration or certificate problem.
    #[error("tls: {0}")]
    Tls(String),
    /// The peer proved an identity other than the one dialled.
    #[error("peer identity is {got}, expected {expected}")]
    WrongIdentity {
        /// The node dialled.
        expected: NodeId,
        /// The node that answered.
        got: NodeId,
    },
    /// A frame longer than the limit, sent or announced.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    Oversized {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A peer left more bytes of frames half-sent (on TCP, chunks of frames not yet
    /// complete, summed over lanes) than [`TransportConfig::max_partial_bytes`].
    #[error("{bytes} bytes of half-sent frames exceed the {max}-byte bound")]
    HalfSent {
        /// Bytes held.
        bytes: usize,
        /// The bound.
        max: usize,
    },
    /// A stream (lane) number at or above [`MAX_STREAMS`].
    #[error("stream {0} is out of range (max {MAX_STREAMS})")]
    BadStream(u32),
    /// A timeout expired: `handshake`, `idle` or `frame`.
    #[error("{0} timeout")]
    Timeout(&'static str),
    /// The connection is closed (by the peer, by us, or reset).
    #[error("connection closed")]
    Closed,
    /// The address could not be parsed or bound.
    #[error("address {addr}: {detail}")]
    Address {
        /// The address.
        addr: String,
        /// Why.
        detail: String,
    },
}

/// Timeouts and bounds shared by every transport.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Largest frame payload accepted or sent.
    pub max_frame_len: usize,
    /// A connection must be authenticated within this.
    pub handshake_timeout: Duration,
    /// Once a frame has started arriving it must complete within this.
    pub frame_timeout: Duration,
    /// A peer that sends no frame for this long is dropped. Nodes send a sync at least
    /// every edge sync interval, so this must exceed the longest one.
    pub idle_timeout: Duration,
    /// QUIC keep-alive interval (transport-level liveness while idle).
    pub keep_alive: Duration,
    /// Bytes of received frames buffered per connection before the sender is pushed
    /// back (QUIC and memory; TCP buffers nothing beyond the socket and one frame).
    /// Must be at least `max_frame_len`.
    pub queue_bytes: usize,
    /// Inbound handshakes in progress at once; more connections are dropped at once.
    pub max_handshakes: usize,
    /// TCP: bytes of frames a peer may leave half-sent (started on one lane, not yet
    /// finished, while other lanes' chunks interleave), summed over lanes. Senders keep
    /// their own half-sent frames within their own setting, so both ends should agree
    /// (as on `max_frame_len`). At least `max_frame_len`.
    pub max_partial_bytes: usize,
    /// QUIC: bytes a peer may send on one lane ahead of our reading it (the stream
    /// receive window). At least `max_frame_len` plus a header.
    pub stream_window: usize,
    /// QUIC: bytes a peer may send on all lanes together ahead of our reading them
    /// (the connection receive window).
    pub connection_window: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_frame_len: por_protocol::wire::MAX_FRAME_LEN,
            handshake_timeout: Duration::from_secs(10),
            frame_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            keep_alive: Duration::from_secs(5),
            queue_bytes: 8 * 1024 * 1024,
            max_handshakes: 256,
            max_partial_bytes: 8 * 1024 * 1024,
            stream_window: 2 * (por_protocol::wire::MAX_FRAME_LEN + frame::HEADER_LEN),
            connection_window: 8 * 1024 * 1024,
        }
    }
}

/// A connection to one authenticated peer.
pub trait Connection: Send + Sync + std::fmt::Debug + 'static {
    /// The peer's verified identity.
    fn peer(&self) -> NodeId;

    /// Sends `frames` on `stream`, in order, each made of its parts written back to
    /// back. Frames on one stream arrive in order; frames on different streams may
    /// overtake each other. Every frame is checked first: an oversized one fails the
    /// call and nothing is sent. Waits while the peer is slow (backpressure) rather
    /// than buffering without bound. TCP and QUIC write a burst at once (few TLS
    /// records and writes, not one per frame), and a large part as it lies, uncopied.
    fn send_frames(
        &self,
        stream: u32,
        frames: Vec<Frame>,
    ) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Sends one frame on `stream`, as [`Connection::send_frames`] does.
    fn send(
        &self,
        stream: u32,
        frame: Bytes,
    ) -> impl Future<Output = Result<(), TransportError>> + Send {
        self.send_frames(stream, vec![Frame::from(frame)])
    }

    /// The next frame from the peer, with its stream. [`TransportError::Closed`] once
    /// the peer is gone; a timeout error if it went idle or stalled mid-frame.
    fn recv(&self) -> impl Future<Output = Result<(u32, Bytes), TransportError>> + Send;

    /// Sends `frames` on `stream`, in order, as [`Connection::send_frames`] does.
    fn send_all(
        &self,
        stream: u32,
        frames: Vec<Bytes>,
    ) -> impl Future<Output = Result<(), TransportError>> + Send {
        self.send_frames(stream, frames.into_iter().map(Frame::from).collect())
    }

    /// Closes the connection; the peer's `recv` returns [`TransportError::Closed`].
    fn close(&self);
}

/// Accepts inbound connections.
pub trait Listener: Send + 'static {
    /// Connection type produced.
    type Conn: Connection;

    /// The address peers dial.
    fn local_addr(&self) -> String;

    /// The next authenticated inbound connection.
    fn accept(&mut self) -> impl Future<Output = Result<Self::Conn, TransportError>> + Send;
}

/// A way to listen and dial.
pub trait Transport: Send + Sync + 'static {
    /// Connection type produced.
    type Conn: Connection;
    /// Listener type produced.
    type Listener: Listener<Conn = Self::Conn>;

    /// Starts listening on `addr` (`127.0.0.1:0` picks a port; `mem` names are free text).
    fn listen(
        &self,
        addr: &str,
    ) -> impl Future<Output = Result<Self::Listener, TransportError>> + Send;

    /// Connects to `addr`, which must prove it is `expected`.
    fn dial(
        &self,
        addr: &str,
        expected: NodeId,
    ) -> impl Future<Output = Result<Self::Conn, TransportError>> + Send;
}

/// Which transport, chosen at runtime.
#[derive(Clone, Debug)]
pub enum AnyTransport {
    /// TCP with TLS.
    Tcp(tcp::TcpTransport),
    /// QUIC.
    Quic(quic::QuicTransport),
    /// In-memory.
    Mem(mem::MemTransport),
}

/// A listener of any transport.
#[derive(Debug)]
pub enum AnyListener {
    /// TCP.
    Tcp(tcp::TcpListener),
    /// QUIC.
    Quic(quic::QuicListener),
    /// In-memory.
    Mem(mem::MemListener),
}

/// A connection of any transport.
#[derive(Debug)]
pub enum AnyConnection {
    /// TCP.
    Tcp(tcp::TcpConnection),
    /// QUIC.
    Quic(quic::QuicConnection),
    /// In-memory.
    Mem(mem::MemConnection),
}

impl Connection for AnyConnection {
    fn peer(&self) -> NodeId {
        match self {
            AnyConnection::Tcp(c) => c.peer(),
            AnyConnection::Quic(c) => c.peer(),
            AnyConnection::Mem(c) => c.peer(),
        }
    }

    fn send_frames(
        &self,
        stream: u32,
        frames: Vec<Frame>,
    ) -> impl Future<Output = Result<(), TransportError>> + Send {
        async move {
            match self {
                AnyConnection::Tcp(c) => c.send_frames(stream, frames).await,
                AnyConnection::Quic(c) => c.send_frames(stream, frames).await,
                AnyConnection::Mem(c) => c.send_frames(stream, frames).await,
            }
        }
    }

    fn recv(&self) -> impl Future<Output = Result<(u32, Bytes), TransportError>> + Send {
        async move {
            match self {
                AnyConnection::Tcp(c) => c.recv().await,
                AnyConnection::Quic(c) => c.recv().await,
                AnyConnection::Mem(c) => c.recv().await,
            }
        }
    }

    fn close(&self) {
        match self {
            AnyConnection::Tcp(c) => c.close(),
            AnyConnection::Quic(c) => c.close(),
            AnyConnection::Mem(c) => c.close(),
        }
    }
}

impl Listener for AnyListener {
    type Conn = AnyConnection;

    fn local_addr(&self) -> String {
        match self {
            AnyListener::Tcp(l) => l.local_addr(),
            AnyListener::Quic(l) => l.local_addr(),
            AnyListener::Mem(l) => l.local_addr(),
        }
    }

    fn accept(&mut self) -> impl Future<Output = Result<AnyConnection, TransportError>> + Send {
        async move {
            Ok(match self {
                AnyListener::Tcp(l) => AnyConnection::Tcp(l.accept().await?),
                AnyListener::Quic(l) => AnyConnection::Quic(l.accept().await?),
                AnyListener::Mem(l) => AnyConnection::Mem(l.accept().await?),
            })
        }
    }
}

impl Transport for AnyTransport {
    type Conn = AnyConnection;
    type Listener = AnyListener;

    fn listen(
        &self,
        addr: &str,
    ) -> impl Future<Output = Result<AnyListener, TransportError>> + Send {
        let addr = addr.to_string();
        async move {
            Ok(match self {
                AnyTransport::Tcp(t) => AnyListener::Tcp(t.listen(&addr).await?),
                AnyTransport::Quic(t) => AnyListener::Quic(t.listen(&addr).await?),
                AnyTransport::Mem(t) => AnyListener::Mem(t.listen(&addr).await?),
            })
        }
    }

    fn dial(
        &self,
        addr: &str,
        expected: NodeId,
    ) -> impl Future<Output = Result<AnyConnection, TransportError>> + Send {
        let addr = addr.to_string();
        async move {
            Ok(match self {
                AnyTransport::Tcp(t) => AnyConnection::Tcp(t.dial(&addr, expected).await?),
                AnyTransport::Quic(t) => AnyConnection::Quic(t.dial(&addr, expected).await?),
                AnyTransport::Mem(t) => AnyConnection::Mem(t.dial(&addr, expected).await?),
            })
        }
    }
}

/// Bounds the bytes of received frames waiting in a queue: a frame takes `len`
/// permits until the application has received it.
#[derive(Clone, Debug)]
struct ByteBudget(std::sync::Arc<tokio::sync::Semaphore>, usize);

impl ByteBudget {
    fn new(bytes: usize) -> ByteBudget {
        let bytes = bytes.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        ByteBudget(
            std::sync::Arc::new(tokio::sync::Semaphore::new(bytes)),
            bytes,
        )
    }

    /// Waits until `len` bytes fit (a frame larger than the whole budget takes it all).
    async fn take(&self, len: usize) -> Result<tokio::sync::OwnedSemaphorePermit, TransportError> {
        let n = u32::try_from(len.clamp(1, self.1)).unwrap_or(u32::MAX);
        self.0
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| TransportError::Closed)
    }
}

/// A received frame and the budget it holds until delivered.
type Queued = (u32, Bytes, tokio::sync::OwnedSemaphorePermit);

/// Refuses a frame longer than `max`.
fn check_frame(frame: &Frame, max: usize) -> Result<(), TransportError> {
    if frame.len() > max {
        Err(TransportError::Oversized {
            len: frame.len(),
            max,
        })
    } else {
        Ok(())
    }
}

fn check_stream(stream: u32) -> Result<(), TransportError> {
    if stream >= MAX_STREAMS {
        Err(TransportError::BadStream(stream))
    } else {
        Ok(())
    }
}

//! In-memory transport for tests: a [`MemNetwork`] of named listeners in one process.
//!
//! Identities are the nodes' keys as given to [`MemTransport::new`]; dialling a name
//! whose listener has another identity fails with [`TransportError::WrongIdentity`],
//! as on the network transports. Queues are bounded in bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};

use bytes::Bytes;
use por_protocol::{Keypair, NodeId};
use tokio::sync::{mpsc, Mutex};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::{
    check_frame, check_stream, ByteBudget, Connection, Frame, Listener, Queued, Transport,
    TransportConfig, TransportError,
};

type Registry = HashMap<String, (NodeId, mpsc::Sender<MemConnection>)>;

/// A set of in-memory listeners that can dial each other.
#[derive(Clone, Debug, Default)]
pub struct MemNetwork {
    listeners: Arc<StdMutex<Registry>>,
    next: Arc<StdMutex<u64>>,
}

impl MemNetwork {
    /// An empty network.
    pub fn new() -> MemNetwork {
        MemNetwork::default()
    }
}

/// One node's view of a [`MemNetwork`].
#[derive(Clone, Debug)]
pub struct MemTransport {
    id: NodeId,
    net: MemNetwork,
    config: Arc<TransportConfig>,
}

impl MemTransport {
    /// The transport of the node with `key` on `net`.
    pub fn new(key: &Keypair, net: &MemNetwork, config: TransportConfig) -> MemTransport {
        MemTransport {
            id: key.id(),
            net: net.clone(),
            config: Arc::new(config),
        }
    }
}

impl Transport for MemTransport {
    type Conn = MemConnection;
    type Listener = MemListener;

    async fn listen(&self, addr: &str) -> Result<MemListener, TransportError> {
        let name = if addr.is_empty() || addr.ends_with(":0") {
            let mut n = self.net.next.lock().map_err(|_| TransportError::Closed)?;
            *n = n.saturating_add(1);
            format!("mem-{n}")
        } else {
            addr.to_string()
        };
        let (tx, rx) = mpsc::channel(64);
        let mut reg = self
            .net
            .listeners
            .lock()
            .map_err(|_| TransportError::Closed)?;
        if reg.contains_key(&name) {
            return Err(TransportError::Address {
                addr: name,
                detail: "already in use".into(),
            });
        }
        reg.insert(name.clone(), (self.id, tx));
        Ok(MemListener {
            name,
            rx,
            net: self.net.clone(),
        })
    }

    async fn dial(&self, addr: &str, expected: NodeId) -> Result<MemConnection, TransportError> {
        let (id, tx) = self
            .net
            .listeners
            .lock()
            .map_err(|_| TransportError::Closed)?
            .get(addr)
            .cloned()
            .ok_or_else(|| TransportError::Dial {
                addr: addr.to_string(),
                detail: "no listener".into(),
            })?;
        if id != expected {
            return Err(TransportError::WrongIdentity { expected, got: id });
        }
        let link = CancellationToken::new();
        let (a_tx, a_rx) = mpsc::channel(4096);
        let (b_tx, b_rx) = mpsc::channel(4096);
        // Each direction's queue has its own byte budget, drawn on by the sender.
        let (to_us, to_them) = (
            ByteBudget::new(self.config.queue_bytes),
            ByteBudget::new(self.config.queue_bytes),
        );
        let ours = MemConnection::new(
            expected,
            b_tx,
            a_rx,
            to_them,
            link.clone(),
            self.config.clone(),
        );
        let theirs = MemConnection::new(self.id, a_tx, b_rx, to_us, link, self.config.clone());
        let accepted = timeout(self.config.handshake_timeout, tx.send(theirs)).await;
        match accepted {
            Ok(Ok(())) => Ok(ours),
            Ok(Err(_)) => Err(TransportError::Dial {
                addr: addr.to_string(),
                detail: "listener closed".into(),
            }),
            Err(_) => Err(TransportError::Timeout("handshake")),
        }
    }
}

/// A named in-memory listener; the name is freed when it is dropped.
#[derive(Debug)]
pub struct MemListener {
    name: String,
    rx: mpsc::Receiver<MemConnection>,
    net: MemNetwork,
}

impl Drop for MemListener {
    fn drop(&mut self) {
        if let Ok(mut reg) = self.net.listeners.lock() {
            reg.remove(&self.name);
        }
    }
}

impl Listener for MemListener {
    type Conn = MemConnection;

    fn local_addr(&self) -> String {
        self.name.clone()
    }

    async fn accept(&mut self) -> Result<MemConnection, TransportError> {
        self.rx.recv().await.ok_or(TransportError::Closed)
    }
}

/// One end of an in-memory connection.
#[derive(Debug)]
pub struct MemConnection {
    peer: NodeId,
    tx: mpsc::Sender<Queued>,
    rx: Mutex<mpsc::Receiver<Queued>>,
    /// The peer's receive budget, which our sends draw on.
    send_budget: ByteBudget,
    link: CancellationToken,
    config: Arc<TransportConfig>,
}

impl MemConnection {
    fn new(
        peer: NodeId,
        tx: mpsc::Sender<Queued>,
        rx: mpsc::Receiver<Queued>,
        send_budget: ByteBudget,
        link: CancellationToken,
        config: Arc<TransportConfig>,
    ) -> MemConnection {
        MemConnection {
            peer,
            tx,
            rx: Mutex::new(rx),
            send_budget,
            link,
            config,
        }
    }
}

impl Drop for MemConnection {
    fn drop(&mut self) {
        self.link.cancel();
    }
}

impl MemConnection {
    /// Queues one checked frame for the peer, waiting for its byte budget.
    async fn push(&self, stream: u32, frame: Bytes) -> Result<(), TransportError> {
        if self.link.is_cancelled() {
            return Err(TransportError::Closed);
        }
        let push = async {
            let permit = self.send_budget.take(frame.len()).await?;
            self.tx
                .send((stream, frame, permit))
                .await
                .map_err(|_| TransportError::Closed)
        };
        tokio::select! {
            r = timeout(self.config.frame_timeout, push) => r.map_err(|_| TransportError::Timeout("frame"))?,
            () = self.link.cancelled() => Err(TransportError::Closed),
        }
    }
}

impl Connection for MemConnection {
    fn peer(&self) -> NodeId {
        self.peer
    }

    async fn send_frames(&self, stream: u32, frames: Vec<Frame>) -> Result<(), TransportError> {
        check_stream(stream)?;
        for frame in &frames {
            check_frame(frame, self.config.max_frame_len)?;
        }
        for frame in frames {
            // In memory a frame is one buffer: parts are joined (a copy only when
            // there are several).
            self.push(stream, frame.into_bytes()).await?;
        }
        Ok(())
    }

    async fn recv(&self) -> Result<(u32, Bytes), TransportError> {
        let mut rx = self.rx.lock().await;
        let got = tokio::select! {
            biased;
            r = timeout(self.config.idle_timeout, rx.recv()) => r,
            // Biased: frames the peer sent before closing are delivered first.
            () = self.link.cancelled() => return Err(TransportError::Closed),
        };
        match got {
            Err(_) => {
                self.link.cancel();
                Err(TransportError::Timeout("idle"))
            }
            Ok(None) => Err(TransportError::Closed),
            Ok(Some((s, f, _permit))) => Ok((s, f)),
        }
    }

    fn close(&self) {
        self.link.cancel();
    }
}

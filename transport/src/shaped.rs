//! A latency-shaping wrapper: every frame sent through it is delivered a fixed one-way
//! delay later, in order. The kernel here has no netem, so this is how real processes
//! get the paper's 100 ms and 200 ms links. Wrap both ends to delay both directions.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use por_protocol::NodeId;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::{check_frame, check_stream, Connection, TransportError};

/// `inner`, with a one-way delay on what it sends.
#[derive(Debug)]
pub struct Shaped<C: Connection> {
    inner: Arc<C>,
    delay: Duration,
    max_frame_len: usize,
    queue: mpsc::Sender<(Instant, u32, Bytes)>,
    pump: JoinHandle<()>,
}

impl<C: Connection> Shaped<C> {
    /// Wraps `inner`, delaying each sent frame by `delay`. At most `queue_frames` frames
    /// wait at once; `send` waits for room beyond that (backpressure).
    pub fn new(inner: C, delay: Duration, max_frame_len: usize, queue_frames: usize) -> Shaped<C> {
        let inner = Arc::new(inner);
        let (queue, mut rx) = mpsc::channel::<(Instant, u32, Bytes)>(queue_frames.max(1));
        let out = inner.clone();
        let pump = tokio::spawn(async move {
            while let Some((at, stream, frame)) = rx.recv().await {
                tokio::time::sleep_until(at).await;
                if out.send(stream, frame).await.is_err() {
                    out.close();
                    return;
                }
            }
        });
        Shaped {
            inner,
            delay,
            max_frame_len,
            queue,
            pump,
        }
    }

    /// The configured one-way delay.
    pub fn delay(&self) -> Duration {
        self.delay
    }
}

impl<C: Connection> Drop for Shaped<C> {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

impl<C: Connection> Connection for Shaped<C> {
    fn peer(&self) -> NodeId {
        self.inner.peer()
    }

    async fn send(&self, stream: u32, frame: Bytes) -> Result<(), TransportError> {
        self.send_all(stream, vec![frame]).await
    }

    async fn send_all(&self, stream: u32, frames: Vec<Bytes>) -> Result<(), TransportError> {
        check_stream(stream)?;
        for frame in &frames {
            check_frame(frame, self.max_frame_len)?;
        }
        if self.pump.is_finished() {
            return Err(TransportError::Closed);
        }
        let due = Instant::now() + self.delay;
        for frame in frames {
            self.queue
                .send((due, stream, frame))
                .await
                .map_err(|_| TransportError::Closed)?;
        }
        Ok(())
    }

    async fn recv(&self) -> Result<(u32, Bytes), TransportError> {
        self.inner.recv().await
    }

    fn close(&self) {
        self.inner.close();
    }
}

//! A latency-shaping wrapper: every frame sent through it is delivered a fixed one-way
//! delay later, in order per lane. The kernel here has no netem, so this is how real
//! processes get the paper's 100 ms and 200 ms links. Wrap both ends to delay both
//! directions. Each lane has its own delay line, so lanes still do not hold each
//! other back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use por_protocol::NodeId;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::{check_frame, check_stream, Connection, Frame, TransportError};

/// A lane's delay line: frames and when each is due.
type Line = mpsc::Sender<(Instant, Frame)>;

/// `inner`, with a one-way delay on what it sends.
#[derive(Debug)]
pub struct Shaped<C: Connection> {
    inner: Arc<C>,
    delay: Duration,
    max_frame_len: usize,
    queue_frames: usize,
    /// Each lane's delay line and the task that feeds it to `inner` when due.
    lines: Mutex<HashMap<u32, (Line, JoinHandle<()>)>>,
}

impl<C: Connection> Shaped<C> {
    /// Wraps `inner`, delaying each sent frame by `delay`. At most `queue_frames` frames
    /// wait at once on each lane; `send` waits for room beyond that (backpressure).
    pub fn new(inner: C, delay: Duration, max_frame_len: usize, queue_frames: usize) -> Shaped<C> {
        Shaped {
            inner: Arc::new(inner),
            delay,
            max_frame_len,
            queue_frames: queue_frames.max(1),
            lines: Mutex::new(HashMap::new()),
        }
    }

    /// The configured one-way delay.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Lane `stream`'s delay line, started on first use; `Closed` once its pump has
    /// failed.
    fn line(&self, stream: u32) -> Result<Line, TransportError> {
        let mut lines = self.lines.lock().map_err(|_| TransportError::Closed)?;
        if let Some((line, pump)) = lines.get(&stream) {
            if pump.is_finished() {
                return Err(TransportError::Closed);
            }
            return Ok(line.clone());
        }
        let (line, mut rx) = mpsc::channel::<(Instant, Frame)>(self.queue_frames);
        let out = self.inner.clone();
        let pump = tokio::spawn(async move {
            while let Some((at, frame)) = rx.recv().await {
                tokio::time::sleep_until(at).await;
                if out.send_frames(stream, vec![frame]).await.is_err() {
                    out.close();
                    return;
                }
            }
        });
        lines.insert(stream, (line.clone(), pump));
        Ok(line)
    }
}

impl<C: Connection> Drop for Shaped<C> {
    fn drop(&mut self) {
        if let Ok(lines) = self.lines.lock() {
            for (_, pump) in lines.values() {
                pump.abort();
            }
        }
    }
}

impl<C: Connection> Connection for Shaped<C> {
    fn peer(&self) -> NodeId {
        self.inner.peer()
    }

    async fn send_frames(&self, stream: u32, frames: Vec<Frame>) -> Result<(), TransportError> {
        check_stream(stream)?;
        for frame in &frames {
            check_frame(frame, self.max_frame_len)?;
        }
        let line = self.line(stream)?;
        let due = Instant::now() + self.delay;
        for frame in frames {
            line.send((due, frame))
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

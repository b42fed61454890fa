//! The one HTTP server loop behind every HTTP surface (control API, metrics and map,
//! files gateway, devnet map): axum's router on hyper, with the bounds a client can
//! drive. `axum::serve` has neither a connection bound nor a header timeout, so a
//! crowd of idle or slowloris connections would hold sockets and tasks for ever;
//! here connections past [`HttpLimits::max_connections`] are closed at once (and
//! counted in the log), and a request whose head has not arrived within
//! [`HttpLimits::header_timeout`] ends its connection.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// What one HTTP surface lets its clients hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections open at once; more are closed on accept.
    pub max_connections: usize,
    /// Time a client has to send a request's head (also the keep-alive idle time
    /// between requests).
    pub header_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 256,
            header_timeout: Duration::from_secs(5),
        }
    }
}

/// Serves `app` on `listener` until accepting fails for good. `what` names the
/// surface in logs.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    what: &'static str,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut refused: u64 = 0;
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of file descriptors, or a connection reset before accept: wait a
            // moment instead of spinning, and carry on.
            Err(e) if transient(&e) => {
                debug!(surface = what, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refused = refused.saturating_add(1);
            if refused.is_power_of_two() {
                warn!(
                    surface = what,
                    %from,
                    refused,
                    "HTTP connection refused: {} already open",
                    limits.max_connections
                );
            }
            drop(stream);
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                debug!(surface = what, %from, "HTTP connection ended: {e}");
            }
            drop(permit);
        });
    }
}

fn transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionAborted | K::ConnectionReset | K::Interrupted | K::WouldBlock
    ) || e.raw_os_error().is_some_and(|c| c == 24 || c == 23) // EMFILE, ENFILE
}

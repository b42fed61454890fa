//! The HTTP gateway: `GET /<root>` and `GET /<root>/<path>` (a file of a collection),
//! fetched through PoR from the providers, verified, and streamed, with `Range`,
//! `Content-Length`, `Content-Type` and `ETag` (axum on hyper).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use por_node::NodeHandle;
use por_protocol::NodeId;
use tokio::sync::{mpsc, Mutex};
use tracing::warn;

use crate::blob::Root;
use crate::collection::Collection;
use crate::error::FilesError;
use crate::transfer::{self, TransferOptions};

/// The largest manifest the gateway reads to resolve a path.
const MAX_MANIFEST: u64 = 16 * 1024 * 1024;

struct Gateway {
    node: NodeHandle,
    providers: Vec<NodeId>,
    options: TransferOptions,
    sizes: Mutex<HashMap<Root, u64>>,
}

/// Serves the gateway on `listen` until the process ends; returns the bound address
/// through `bound` once listening.
pub async fn serve(
    node: NodeHandle,
    providers: Vec<NodeId>,
    options: TransferOptions,
    listen: &str,
    bound: impl FnOnce(SocketAddr),
) -> Result<(), FilesError> {
    if providers.is_empty() {
        return Err(FilesError::Gateway("no provider given".into()));
    }
    let state = Arc::new(Gateway {
        node,
        providers,
        options,
        sizes: Mutex::new(HashMap::new()),
    });
    let app = Router::new()
        .route("/{root}", get(whole))
        .route("/{root}/{*path}", get(in_collection))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| FilesError::Gateway(format!("listening on {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| FilesError::Gateway(e.to_string()))?;
    bound(addr);
    por_node::http::serve(
        listener,
        app,
        por_node::http::HttpLimits::default(),
        "gateway",
    )
    .await
    .map_err(|e| FilesError::Gateway(e.to_string()))
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (status, format!("{msg}\n")).into_response()
}

impl Gateway {
    async fn size(&self, root: Root) -> Result<u64, FilesError> {
        if let Some(s) = self.sizes.lock().await.get(&root) {
            return Ok(*s);
        }
        let mut last = None;
        for p in &self.providers {
            match transfer::have(&self.node, *p, root).await {
                Ok(size) => {
                    self.sizes.lock().await.insert(root, size);
                    return Ok(size);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(FilesError::NotFound(root)))
    }

    async fn manifest(&self, root: Root) -> Result<Collection, FilesError> {
        let size = self.size(root).await?;
        if size > MAX_MANIFEST {
            return Err(FilesError::Malformed(format!(
                "{root} is too large for a manifest"
            )));
        }
        let (tx, mut rx) = mpsc::channel(4);
        let fetch = transfer::fetch_range(
            &self.node,
            root,
            size,
            &self.providers,
            (0, size),
            &self.options,
            tx,
        );
        let collect = async {
            let mut bytes = Vec::new();
            while let Some(b) = rx.recv().await {
                bytes.extend_from_slice(&b);
            }
            bytes
        };
        let (fetched, bytes) = tokio::join!(fetch, collect);
        fetched?;
        Collection::decode(&bytes)
    }
}

async fn whole(
    State(g): State<Arc<Gateway>>,
    Path(root): Path<String>,
    headers: HeaderMap,
) -> Response {
    let root = match Root::parse(&root) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let size = match g.size(root).await {
        Ok(s) => s,
        Err(e) => return error(StatusCode::NOT_FOUND, e),
    };
    serve_blob(g, root, size, None, &headers)
}

async fn in_collection(
    State(g): State<Arc<Gateway>>,
    Path((root, path)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let root = match Root::parse(&root) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let manifest = match g.manifest(root).await {
        Ok(m) => m,
        Err(e) => return error(StatusCode::NOT_FOUND, e),
    };
    let Some(entry) = manifest.get(&path).cloned() else {
        return error(StatusCode::NOT_FOUND, format!("{path:?} is not in {root}"));
    };
    g.sizes.lock().await.insert(entry.root, entry.size);
    serve_blob(g, entry.root, entry.size, Some(&entry.name), &headers)
}

/// Parses a single `bytes=` range against `size`: `Ok(None)` for no header,
/// `Err(())` for an unsatisfiable or unsupported one.
fn parse_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(v) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let v = v.to_str().map_err(|_| ())?.trim();
    let spec = v.strip_prefix("bytes=").ok_or(())?;
    if spec.contains(',') {
        return Err(());
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| ())?;
            (size.saturating_sub(n), size)
        }
        (a, "") => (a.parse().map_err(|_| ())?, size),
        (a, b) => {
            let a: u64 = a.parse().map_err(|_| ())?;
            let b: u64 = b.parse().map_err(|_| ())?;
            if b < a {
                return Err(());
            }
            (a, b.saturating_add(1).min(size))
        }
    };
    if start >= size || start >= end {
        return Err(());
    }
    Ok(Some((start, end)))
}

fn serve_blob(
    g: Arc<Gateway>,
    root: Root,
    size: u64,
    name: Option<&str>,
    headers: &HeaderMap,
) -> Response {
    let etag = format!("\"{root}\"");
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == etag)
    {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let range = match parse_range(headers, size) {
        Ok(r) => r,
        Err(()) => {
            let mut r = error(StatusCode::RANGE_NOT_SATISFIABLE, "unsatisfiable range");
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    let (from, to) = range.unwrap_or((0, size));
    let mime = name
        .map(|n| mime_guess::from_path(n).first_or_octet_stream().to_string())
        .unwrap_or_else(|| "application/octet-stream".into());
    let (tx, rx) = mpsc::channel::<bytes::Bytes>(4);
    let (err_tx, err_rx) = tokio::sync::oneshot::channel::<std::io::Error>();
    tokio::spawn(async move {
        // Dropping the body (the client went away) drops `rx`: the fetch stops.
        let r = transfer::fetch_range(
            &g.node,
            root,
            size,
            &g.providers,
            (from, to),
            &g.options,
            tx,
        )
        .await;
        if let Err(e) = r {
            warn!(%root, "gateway fetch failed: {e}");
            let _ = err_tx.send(std::io::Error::other(e.to_string()));
        }
    });
    // The data, then the fetch's error if it failed: the body then ends in an error,
    // so the client sees a truncated response, never a short one passed as whole.
    let stream = futures::stream::unfold((rx, Some(err_rx)), |(mut rx, err)| async move {
        match rx.recv().await {
            Some(b) => Some((Ok::<_, std::io::Error>(b), (rx, err))),
            None => match err {
                Some(e) => e.await.ok().map(|e| (Err(e), (rx, None))),
                None => None,
            },
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    let set = |h: &mut HeaderMap, k: header::HeaderName, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    set(h, header::CONTENT_TYPE, mime);
    set(h, header::ETAG, etag);
    set(h, header::ACCEPT_RANGES, "bytes".into());
    set(h, header::CONTENT_LENGTH, (to - from).to_string());
    if range.is_some() {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        set(
            resp.headers_mut(),
            header::CONTENT_RANGE,
            format!("bytes {from}-{}/{size}", to.saturating_sub(1)),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
        m
    }

    #[test]
    fn ranges_parse_as_rfc_9110_says() {
        assert_eq!(parse_range(&HeaderMap::new(), 10), Ok(None));
        assert_eq!(parse_range(&h("bytes=0-4"), 10), Ok(Some((0, 5))));
        assert_eq!(parse_range(&h("bytes=5-"), 10), Ok(Some((5, 10))));
        assert_eq!(parse_range(&h("bytes=-3"), 10), Ok(Some((7, 10))));
        assert_eq!(parse_range(&h("bytes=8-100"), 10), Ok(Some((8, 10))));
        assert!(parse_range(&h("bytes=10-"), 10).is_err());
        assert!(parse_range(&h("bytes=5-2"), 10).is_err());
        assert!(parse_range(&h("bytes=0-1,3-4"), 10).is_err());
        assert!(parse_range(&h("items=0-1"), 10).is_err());
    }
}

//! Plain forwarding over por's authenticated TCP transport: the baseline the `hops`
//! bench (node/benches) and the `files` bench (cli/benches) measure por against. A path
//! of transports in one process; relays pass frames on, with no payments, signatures
//! or persistence.
#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

use std::sync::Arc;

use bytes::Bytes;
use por_protocol::Keypair;
use por_transport::tcp::TcpTransport;
use por_transport::{Connection, Listener, Transport, TransportConfig};

/// The keys and TCP transports of a path of `hops` hops (client first, server last),
/// the keys seeded from `seed` up.
pub fn transports(hops: usize, seed: u8) -> (Vec<Keypair>, Vec<TcpTransport>) {
    let keys: Vec<Keypair> = (0..=hops)
        .map(|i| Keypair::from_seed([seed + i as u8; 32]))
        .collect();
    let t = keys
        .iter()
        .map(|k| TcpTransport::new(k, TransportConfig::default()).unwrap())
        .collect();
    (keys, t)
}

/// The relays of a path (`t[1..]`, the server's transport last) in front of the server
/// listening at `server`: each passes requests down and answers up, handing each
/// answer to its own `check` (`check_for(i)`, for relay `i`) before it goes on.
/// Returns the address the client dials.
pub async fn relays<C: FnMut(&Bytes) + Send + 'static>(
    t: &[TcpTransport],
    keys: &[Keypair],
    server: String,
    check_for: impl Fn(usize) -> C,
) -> String {
    let mut next_addr = server;
    for i in (1..t.len() - 1).rev() {
        let mut l = t[i].listen("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr();
        let down = Arc::new(t[i].dial(&next_addr, keys[i + 1].id()).await.unwrap());
        let mut check = check_for(i);
        tokio::spawn(async move {
            if let Ok(up) = l.accept().await {
                let up = Arc::new(up);
                let (u, d) = (up.clone(), down.clone());
                tokio::spawn(async move {
                    while let Ok((s, f)) = d.recv().await {
                        check(&f);
                        if u.send(s, f).await.is_err() {
                            break;
                        }
                    }
                });
                while let Ok((s, f)) = up.recv().await {
                    if down.send(s, f).await.is_err() {
                        break;
                    }
                }
            }
        });
        next_addr = addr;
    }
    next_addr
}

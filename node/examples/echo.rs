//! An echo server and a client on the embedded chain: `cargo run -p por-node --example echo`.
//!
//! The server implements [`Handler`]; the client sends one paid request and prints the
//! verified, server-signed response, then a quote for a bigger body.

mod common;

use por_node::{Handler, IncomingRequest, Outcome, RequestOptions, DEFAULT_RESPONSE_LIMIT};

/// Answers every request with its body.
struct Echo;

impl Handler for Echo {
    async fn handle(&self, request: IncomingRequest) -> Vec<u8> {
        request.body
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (client, server) = common::client_and_server("echo", Echo).await?;
    let outcome = client
        .request(
            server.id(),
            b"hello, por".to_vec(),
            RequestOptions::default(),
        )
        .await?;
    match &outcome {
        Outcome::Response {
            body,
            latency_ms,
            on_time,
            ..
        } => println!(
            "response {:?} in {latency_ms} ms ({})",
            String::from_utf8_lossy(body),
            if *on_time { "on time" } else { "late" }
        ),
        other => println!("outcome: {other:?}"),
    }
    for q in client
        .quote(server.id(), 10_000, DEFAULT_RESPONSE_LIMIT, 60_000, 1)
        .await?
    {
        println!(
            "a 10 kB request buying a 4 KiB answer would cost {} yoctoNEAR, answer due within {} ms",
            q.cost, q.rtt_ms
        );
    }
    client.shutdown().await?;
    server.shutdown().await?;
    Ok(())
}

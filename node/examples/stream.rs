//! A request stream: `cargo run -p por-node --example stream`.
//!
//! The client sends 200 requests with at most 32 in flight and consumes the outcomes
//! as a `Stream`, in completion order.

mod common;

use futures::StreamExt;
use por_node::{handler_fn, Outcome, RequestOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let upper = handler_fn(|req| async move { req.body.to_ascii_uppercase() });
    let (client, server) = common::client_and_server("stream", upper).await?;
    let bodies = futures::stream::iter((0..200).map(|i| format!("request {i}").into_bytes()));
    let mut outcomes =
        Box::pin(client.request_stream(server.id(), bodies, 32, RequestOptions::default()));
    let (mut responses, mut latency_sum) = (0u64, 0u64);
    while let Some((i, outcome)) = outcomes.next().await {
        match outcome? {
            Outcome::Response {
                body, latency_ms, ..
            } => {
                responses += 1;
                latency_sum += latency_ms;
                if i % 50 == 0 {
                    println!("#{i}: {}", String::from_utf8_lossy(&body));
                }
            }
            other => println!("#{i}: {other:?}"),
        }
    }
    println!(
        "{responses} responses, mean latency {} ms",
        latency_sum / responses.max(1)
    );
    let status = client.status().await?;
    println!("client paid {} over its channel", status.channels[0].paid);
    client.shutdown().await?;
    server.shutdown().await?;
    Ok(())
}

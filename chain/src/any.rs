//! [`AnyChain`]: the chain a node runs against, chosen at run time.

use serde_json::Value;

use crate::api::{Chain, EventPage};
use crate::{ChainError, LocalClient};

/// A [`Chain`] chosen at run time: the embedded chain in this process, one served by
/// another process, or NEAR.
#[derive(Debug)]
pub enum AnyChain {
    /// The embedded chain, in process.
    Local(LocalClient),
    /// An embedded chain served by `por chain serve`.
    Remote(crate::RemoteClient),
    /// NEAR over RPC.
    Near(crate::NearClient),
}

impl Chain for AnyChain {
    fn account(&self) -> &str {
        match self {
            AnyChain::Local(c) => c.account(),
            AnyChain::Remote(c) => c.account(),
            AnyChain::Near(c) => c.account(),
        }
    }

    async fn call(&self, method: &str, args: Value, deposit: u128) -> Result<Value, ChainError> {
        match self {
            AnyChain::Local(c) => c.call(method, args, deposit).await,
            AnyChain::Remote(c) => c.call(method, args, deposit).await,
            AnyChain::Near(c) => c.call(method, args, deposit).await,
        }
    }

    async fn view(&self, method: &str, args: Value) -> Result<Value, ChainError> {
        match self {
            AnyChain::Local(c) => c.view(method, args).await,
            AnyChain::Remote(c) => c.view(method, args).await,
            AnyChain::Near(c) => c.view(method, args).await,
        }
    }

    async fn height(&self) -> Result<u64, ChainError> {
        match self {
            AnyChain::Local(c) => c.height().await,
            AnyChain::Remote(c) => c.height().await,
            AnyChain::Near(c) => c.height().await,
        }
    }

    async fn events_since(&self, height: u64) -> Result<EventPage, ChainError> {
        match self {
            AnyChain::Local(c) => c.events_since(height).await,
            AnyChain::Remote(c) => c.events_since(height).await,
            AnyChain::Near(c) => c.events_since(height).await,
        }
    }
}

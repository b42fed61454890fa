//! [`LocalClient`]: the [`Chain`] of the embedded chain, in this process.

use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::api::{Chain, EventPage, EVENT_PAGE};
use crate::local::{LocalChain, DEFAULT_GAS};
use crate::ChainError;

/// The embedded chain, shared by the node (and whoever else holds the handle), signing
/// as `signer`. Calls run synchronously under a lock: each is a few milliseconds.
#[derive(Clone, Debug)]
pub struct LocalClient {
    chain: Arc<Mutex<LocalChain>>,
    signer: String,
}

impl LocalClient {
    /// A client of `chain` acting as `signer`.
    pub fn new(chain: Arc<Mutex<LocalChain>>, signer: &str) -> LocalClient {
        LocalClient {
            chain,
            signer: signer.to_string(),
        }
    }

    /// The shared chain.
    pub fn chain(&self) -> &Arc<Mutex<LocalChain>> {
        &self.chain
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, LocalChain>, ChainError> {
        self.chain
            .lock()
            .map_err(|_| ChainError::Db("chain lock poisoned".into()))
    }
}

impl Chain for LocalClient {
    fn account(&self) -> &str {
        &self.signer
    }

    async fn call(&self, method: &str, args: Value, deposit: u128) -> Result<Value, ChainError> {
        let out = self.lock()?.call(
            &self.signer,
            method,
            args.to_string().as_bytes(),
            deposit,
            DEFAULT_GAS,
        )?;
        if out.value.is_empty() {
            return Ok(Value::Null);
        }
        out.json()
    }

    async fn view(&self, method: &str, args: Value) -> Result<Value, ChainError> {
        self.lock()?.view_json(method, args)
    }

    async fn height(&self) -> Result<u64, ChainError> {
        Ok(self.lock()?.height())
    }

    async fn events_since(&self, height: u64) -> Result<EventPage, ChainError> {
        self.lock()?.event_page(height, EVENT_PAGE)
    }
}

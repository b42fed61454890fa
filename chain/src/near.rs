//! [`NearClient`]: the [`Chain`] on a real NEAR network (sandbox, testnet or mainnet)
//! over JSON-RPC (near-jsonrpc-client), signing transactions with a NEAR account key
//! read from a key file (the JSON that `near-cli` writes: `account_id`, `public_key`,
//! `private_key`).

use std::path::Path;

use near_crypto::{InMemorySigner, PublicKey, Signer};
use near_jsonrpc_client::{methods, JsonRpcClient};
use near_jsonrpc_primitives::types::query::QueryResponseKind;
use near_jsonrpc_primitives::types::transactions::TransactionInfo;
use near_primitives::account::AccessKey;
use near_primitives::gas::Gas;
use near_primitives::hash::CryptoHash;
use near_primitives::transaction::{
    Action, AddKeyAction, CreateAccountAction, DeployContractAction, FunctionCallAction,
    SignedTransaction, Transaction, TransactionV0, TransferAction,
};
use near_primitives::types::{AccountId, Balance, BlockId, BlockReference, Finality};
use near_primitives::views::{FinalExecutionStatus, QueryRequest, TxExecutionStatus};
use serde_json::Value;

use crate::api::{Chain, EventPage};
use crate::local::DEFAULT_GAS;
use crate::ChainError;

/// Most blocks one [`Chain::events_since`] call scans; ask again from the last height.
pub const SCAN_BLOCKS: u64 = 20;

/// Where a [`NearClient`] points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NearConfig {
    /// The JSON-RPC endpoint.
    pub rpc_url: String,
    /// The por contract's account.
    pub contract: String,
}

impl NearConfig {
    /// The public RPC endpoint of a named network: `sandbox` (a local `neard` on its
    /// default port), `testnet` or `mainnet`; anything else is taken as a URL.
    pub fn endpoint(network: &str) -> String {
        match network {
            "sandbox" | "localnet" => "http://127.0.0.1:3030".to_string(),
            "testnet" => "https://rpc.testnet.near.org".to_string(),
            "mainnet" => "https://rpc.mainnet.near.org".to_string(),
            url => url.to_string(),
        }
    }
}

fn rpc_err(what: &str, e: impl std::fmt::Display) -> ChainError {
    ChainError::Remote(format!("{what}: {e}"))
}

fn account_id(s: &str) -> Result<AccountId, ChainError> {
    s.parse()
        .map_err(|e| ChainError::BadAccount(format!("{s}: {e}")))
}

/// Writes `text` to a new file at `path` readable by its owner only.
fn write_private(path: &Path, text: &str) -> Result<(), ChainError> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let key = |e: std::io::Error| ChainError::Key(format!("{}: {e}", path.display()));
    let mut f = options.open(path).map_err(key)?;
    f.write_all(text.as_bytes()).map_err(key)?;
    f.sync_all().map_err(key)
}

/// Reads a NEAR key file (`{"account_id", "public_key", "private_key"}`).
pub fn read_key_file(path: &Path) -> Result<Signer, ChainError> {
    InMemorySigner::from_file(path).map_err(|e| ChainError::Key(format!("{}: {e}", path.display())))
}

/// Builds and signs a function call transaction.
pub fn function_call(
    signer: &Signer,
    contract: &AccountId,
    nonce: u64,
    block_hash: CryptoHash,
    method: &str,
    args: &Value,
    deposit: u128,
) -> SignedTransaction {
    signed(
        signer,
        contract,
        nonce,
        block_hash,
        vec![call_action(method, args, deposit)],
    )
}

fn call_action(method: &str, args: &Value, deposit: u128) -> Action {
    Action::FunctionCall(Box::new(FunctionCallAction {
        method_name: method.to_string(),
        args: args.to_string().into_bytes(),
        gas: Gas::from_gas(DEFAULT_GAS),
        deposit: Balance::from_yoctonear(deposit),
    }))
}

/// Builds and signs a transaction of `actions` to `receiver`.
fn signed(
    signer: &Signer,
    receiver: &AccountId,
    nonce: u64,
    block_hash: CryptoHash,
    actions: Vec<Action>,
) -> SignedTransaction {
    let tx = Transaction::V0(TransactionV0 {
        signer_id: signer.get_account_id(),
        public_key: signer.public_key(),
        nonce,
        receiver_id: receiver.clone(),
        block_hash,
        actions,
    });
    let (hash, _) = tx.get_hash_and_size();
    SignedTransaction::new(signer.sign(hash.as_ref()), tx)
}

/// The actions that create `account` with `balance` yoctoNEAR and `key` as its
/// full-access key.
fn create_actions(balance: u128, key: PublicKey) -> Vec<Action> {
    vec![
        Action::CreateAccount(CreateAccountAction {}),
        Action::Transfer(TransferAction {
            deposit: Balance::from_yoctonear(balance),
        }),
        Action::AddKey(Box::new(AddKeyAction {
            public_key: key,
            access_key: AccessKey::full_access(),
        })),
    ]
}

/// What [`NearClient::deploy`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployed {
    /// The contract account.
    pub contract: String,
    /// Whether the account was created for it (else the code went into the signer's
    /// own account).
    pub created: bool,
    /// The deployment every signature for this contract is bound to (hex).
    pub deployment: String,
}

/// The access key's nonce an `InvalidNonce` refusal names (`ak_nonce: N`).
fn ak_nonce_of(text: &str) -> Option<u64> {
    let rest = &text[text.find("ak_nonce: ")?.saturating_add("ak_nonce: ".len())..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn parse_value(bytes: &[u8]) -> Result<Value, ChainError> {
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(bytes).map_err(|e| ChainError::Decode(e.to_string()))
}

/// The chain on NEAR.
pub struct NearClient {
    rpc: JsonRpcClient,
    signer: Signer,
    account: String,
    contract: AccountId,
    /// The access key's last nonce, once read.
    nonce: tokio::sync::Mutex<Option<u64>>,
}

impl std::fmt::Debug for NearClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NearClient({} → {})", self.account, self.contract)
    }
}

impl NearClient {
    /// A client of `config`, signing with the key in `key_file`.
    pub fn new(config: &NearConfig, key_file: &Path) -> Result<NearClient, ChainError> {
        let signer = read_key_file(key_file)?;
        Self::with_signer(config, signer)
    }

    /// A client of `config` signing with `signer`.
    pub fn with_signer(config: &NearConfig, signer: Signer) -> Result<NearClient, ChainError> {
        Ok(NearClient {
            rpc: JsonRpcClient::connect(&config.rpc_url),
            account: signer.get_account_id().to_string(),
            signer,
            contract: account_id(&config.contract)?,
            nonce: tokio::sync::Mutex::new(None),
        })
    }

    /// The access key's current nonce and a recent final block hash.
    async fn access_key(&self) -> Result<(u64, CryptoHash), ChainError> {
        let resp = self
            .rpc
            .call(methods::query::RpcQueryRequest {
                block_reference: BlockReference::Finality(Finality::Final),
                request: QueryRequest::ViewAccessKey {
                    account_id: self.signer.get_account_id(),
                    public_key: self.signer.public_key(),
                },
            })
            .await
            .map_err(|e| rpc_err("reading the access key", e))?;
        match resp.kind {
            QueryResponseKind::AccessKey(key) => Ok((key.nonce, resp.block_hash)),
            other => Err(ChainError::Decode(format!("access key: {other:?}"))),
        }
    }

    async fn final_height(&self) -> Result<u64, ChainError> {
        let block = self
            .rpc
            .call(methods::block::RpcBlockRequest {
                block_reference: BlockReference::Finality(Finality::Final),
            })
            .await
            .map_err(|e| rpc_err("reading the final block", e))?;
        Ok(block.header.height)
    }

    /// Events of the transactions to the contract included in block `height`.
    async fn block_events(&self, height: u64) -> Result<Vec<Value>, ChainError> {
        let block = match self
            .rpc
            .call(methods::block::RpcBlockRequest {
                block_reference: BlockReference::BlockId(BlockId::Height(height)),
            })
            .await
        {
            Ok(b) => b,
            // A height with no block (skipped, or garbage-collected by a non-archival
            // node: its events are out of reach, which is why a node also reads the
            // closes of its channels and the topology from views at start) has no
            // events. neard answers UNKNOWN_BLOCK with HTTP 200 for a height it never
            // had and with 422 for one whose block it no longer holds; the client
            // reports the latter by its status alone.
            Err(e)
                if e.to_string().contains("UNKNOWN_BLOCK")
                    || e.to_string().contains("422 Unprocessable Entity") =>
            {
                tracing::debug!(height, "no block at this height: {e}");
                return Ok(Vec::new());
            }
            Err(e) => return Err(rpc_err("reading a block", e)),
        };
        let mut out = Vec::new();
        for header in block.chunks {
            let chunk = self
                .rpc
                .call(methods::chunk::RpcChunkRequest {
                    chunk_reference:
                        near_jsonrpc_primitives::types::chunks::ChunkReference::ChunkHash {
                            chunk_id: header.chunk_hash,
                        },
                })
                .await
                .map_err(|e| rpc_err("reading a chunk", e))?;
            for tx in chunk.transactions {
                if tx.receiver_id != self.contract {
                    continue;
                }
                let status = self
                    .rpc
                    .call(methods::tx::RpcTransactionStatusRequest {
                        transaction_info: TransactionInfo::TransactionId {
                            tx_hash: tx.hash,
                            sender_account_id: tx.signer_id.clone(),
                        },
                        wait_until: TxExecutionStatus::Final,
                    })
                    .await
                    .map_err(|e| rpc_err("reading a transaction", e))?;
                let Some(outcome) = status.final_execution_outcome else {
                    continue;
                };
                let outcome = outcome.into_outcome();
                for r in outcome.receipts_outcome {
                    if r.outcome.executor_id != self.contract {
                        continue;
                    }
                    out.extend(
                        r.outcome
                            .logs
                            .iter()
                            .filter_map(|l| l.strip_prefix("EVENT_JSON:"))
                            .filter_map(|j| serde_json::from_str(j).ok()),
                    );
                }
            }
        }
        Ok(out)
    }

    async fn send(&self, method: &str, args: &Value, deposit: u128) -> Result<Value, ChainError> {
        let contract = self.contract.clone();
        self.send_actions(method, &contract, vec![call_action(method, args, deposit)])
            .await
    }

    /// Whether `account` exists.
    pub async fn account_exists(&self, account: &str) -> Result<bool, ChainError> {
        let resp = self
            .rpc
            .call(methods::query::RpcQueryRequest {
                block_reference: BlockReference::Finality(Finality::Final),
                request: QueryRequest::ViewAccount {
                    account_id: account_id(account)?,
                },
            })
            .await;
        match resp {
            Ok(_) => Ok(true),
            Err(e)
                if e.to_string().contains("UNKNOWN_ACCOUNT")
                    || e.to_string().contains("does not exist") =>
            {
                Ok(false)
            }
            Err(e) => Err(rpc_err("reading an account", e)),
        }
    }

    /// Creates `account` (a sub-account of the signer's on NEAR networks) with
    /// `balance` yoctoNEAR, and `key` as its full-access key.
    pub async fn create_account(
        &self,
        account: &str,
        balance: u128,
        key: PublicKey,
    ) -> Result<(), ChainError> {
        let id = account_id(account)?;
        self.send_actions("create_account", &id, create_actions(balance, key))
            .await
            .map(|_| ())
    }

    /// Creates `account` with `balance` and a fresh key, written as a near-cli key
    /// file to `path` (mode 0600) so that a node can sign as it.
    pub async fn create_account_with_key_file(
        &self,
        account: &str,
        balance: u128,
        path: &Path,
    ) -> Result<(), ChainError> {
        let secret = near_crypto::SecretKey::from_random(near_crypto::KeyType::ED25519);
        let text = serde_json::json!({"account_id": account,
            "public_key": secret.public_key().to_string(),
            "private_key": secret.to_string()})
        .to_string();
        write_private(path, &text)?;
        self.create_account(account, balance, secret.public_key())
            .await
    }

    /// `por contract deploy`: deploys `wasm` at this client's contract account and
    /// initialises it with `config` (`new`), in one transaction signed by this
    /// client's key, so that a contract never exists uninitialised. If the contract
    /// account is the signer's own, the code goes into it; otherwise the account is
    /// created first with `initial_balance` (it pays for the code's storage) and the
    /// signer's key as its full-access key. An account that exists already and is not
    /// the signer's is refused: deploy into it with its own key.
    pub async fn deploy(
        &self,
        wasm: &[u8],
        config: &Value,
        initial_balance: u128,
    ) -> Result<Deployed, ChainError> {
        let contract = self.contract.clone();
        let own = contract == self.signer.get_account_id();
        let exists = self.account_exists(contract.as_str()).await?;
        let mut actions = Vec::new();
        match (own, exists) {
            (true, _) => {}
            (false, false) => {
                actions.extend(create_actions(initial_balance, self.signer.public_key()));
            }
            (false, true) => {
                return Err(ChainError::BadAccount(format!(
                    "{contract} exists and is not {}: deploy into it with its own key",
                    self.account
                )))
            }
        }
        actions.push(Action::DeployContract(DeployContractAction {
            code: wasm.to_vec(),
        }));
        actions.push(call_action(
            "new",
            &serde_json::json!({ "config": config }),
            0,
        ));
        self.send_actions("deploy", &contract, actions).await?;
        let deployment = self
            .view("get_deployment", serde_json::json!({}))
            .await?
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| ChainError::Decode("get_deployment".into()))?;
        Ok(Deployed {
            contract: contract.to_string(),
            created: !own,
            deployment,
        })
    }

    /// Signs and sends a transaction of `actions` to `receiver`, waiting until it is
    /// final; returns the value of its last receipt.
    async fn send_actions(
        &self,
        method: &str,
        receiver: &AccountId,
        actions: Vec<Action>,
    ) -> Result<Value, ChainError> {
        let mut nonce = self.nonce.lock().await;
        let mut attempt = 0u32;
        let resp = loop {
            attempt = attempt.saturating_add(1);
            let (last, block_hash) = match *nonce {
                Some(n) => (n, self.access_key().await?.1),
                None => self.access_key().await?,
            };
            let next = last.saturating_add(1);
            let tx = signed(&self.signer, receiver, next, block_hash, actions.clone());
            let sent = self
                .rpc
                .call(methods::send_tx::RpcSendTransactionRequest {
                    signed_transaction: tx,
                    wait_until: TxExecutionStatus::Final,
                })
                .await;
            match sent {
                Ok(r) => {
                    *nonce = Some(next);
                    break r;
                }
                Err(e) => {
                    // The nonce may have moved (another client of the same key: the
                    // CLI beside a node): read it again. A transaction refused for its
                    // nonce was not applied, so it alone is safe to send again.
                    let text = e.to_string();
                    // The refusal names the key's nonce as NEAR holds it (ahead of
                    // what a final-block read shows): go on from there.
                    *nonce = ak_nonce_of(&text);
                    if text.contains("InvalidNonce") && attempt < 8 {
                        tracing::debug!(method, attempt, "nonce moved under us: {text}");
                        continue;
                    }
                    return Err(rpc_err(method, e));
                }
            }
        };
        drop(nonce);
        let outcome = resp
            .final_execution_outcome
            .ok_or_else(|| ChainError::Remote(format!("{method}: no outcome")))?
            .into_outcome();
        match outcome.status {
            FinalExecutionStatus::SuccessValue(bytes) => parse_value(&bytes),
            FinalExecutionStatus::Failure(err) => Err(ChainError::Aborted {
                method: method.to_string(),
                message: err.to_string(),
                logs: outcome
                    .receipts_outcome
                    .into_iter()
                    .flat_map(|r| r.outcome.logs)
                    .collect(),
            }),
            other => Err(ChainError::Remote(format!("{method}: {other:?}"))),
        }
    }
}

impl Chain for NearClient {
    fn account(&self) -> &str {
        &self.account
    }

    async fn call(&self, method: &str, args: Value, deposit: u128) -> Result<Value, ChainError> {
        self.send(method, &args, deposit).await
    }

    async fn view(&self, method: &str, args: Value) -> Result<Value, ChainError> {
        let resp = self
            .rpc
            .call(methods::query::RpcQueryRequest {
                block_reference: BlockReference::Finality(Finality::Final),
                request: QueryRequest::CallFunction {
                    account_id: self.contract.clone(),
                    method_name: method.to_string(),
                    args: args.to_string().into_bytes().into(),
                },
            })
            .await
            .map_err(|e| ChainError::Aborted {
                method: method.to_string(),
                message: e.to_string(),
                logs: Vec::new(),
            })?;
        match resp.kind {
            QueryResponseKind::CallResult(r) => parse_value(&r.result),
            other => Err(ChainError::Decode(format!("{method}: {other:?}"))),
        }
    }

    async fn height(&self) -> Result<u64, ChainError> {
        self.final_height().await
    }

    async fn events_since(&self, height: u64) -> Result<EventPage, ChainError> {
        let through = self
            .final_height()
            .await?
            .min(height.saturating_add(SCAN_BLOCKS))
            .max(height);
        let mut events = Vec::new();
        for h in height.saturating_add(1)..=through {
            events.extend(self.block_events(h).await?.into_iter().map(|e| (h, e)));
        }
        Ok(EventPage { events, through })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use near_crypto::{KeyType, SecretKey};

    #[test]
    fn an_invalid_nonce_refusal_names_the_nonce_to_go_on_from() {
        let text = "storage_deposit: handler error: [An error happened during transaction \
                    execution: InvalidNonce { tx_nonce: 13000001, ak_nonce: 13000002 }]";
        assert_eq!(ak_nonce_of(text), Some(13_000_002));
        assert_eq!(ak_nonce_of("connection refused"), None);
    }

    #[test]
    fn reads_a_near_cli_key_file_and_signs_verifiable_calls() {
        let dir = std::env::temp_dir().join(format!("por-near-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = SecretKey::from_seed(KeyType::ED25519, "alice");
        let file = dir.join("alice.json");
        std::fs::write(
            &file,
            serde_json::json!({"account_id": "alice.test.near",
                "public_key": secret.public_key().to_string(),
                "private_key": secret.to_string()})
            .to_string(),
        )
        .unwrap();
        let signer = read_key_file(&file).unwrap();
        assert_eq!(signer.get_account_id().as_str(), "alice.test.near");
        let contract: AccountId = "por.test.near".parse().unwrap();
        let args = serde_json::json!({"id": "7"});
        let tx = function_call(
            &signer,
            &contract,
            42,
            CryptoHash::default(),
            "confirm_channel",
            &args,
            5,
        );
        let (hash, _) = tx.transaction.get_hash_and_size();
        assert!(tx.signature.verify(hash.as_ref(), &secret.public_key()));
        assert_eq!(tx.transaction.nonce().nonce(), 42);
        assert_eq!(tx.transaction.receiver_id(), &contract);
        let Action::FunctionCall(call) = &tx.transaction.actions()[0] else {
            panic!("not a function call");
        };
        assert_eq!(call.args, args.to_string().into_bytes());
        assert_eq!(call.deposit, Balance::from_yoctonear(5));

        // Missing or malformed key files name the file.
        let err = read_key_file(&dir.join("missing.json")).unwrap_err();
        assert!(err.to_string().contains("missing.json"), "{err}");
        std::fs::write(dir.join("bad.json"), "{}").unwrap();
        let err = read_key_file(&dir.join("bad.json")).unwrap_err();
        assert!(err.to_string().contains("bad.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

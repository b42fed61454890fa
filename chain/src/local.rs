//! The embedded local chain: the compiled contract wasm, executed by near-vm-runner
//! (wasmtime) with NEAR's real host functions and gas metering, around a small ledger
//! of accounts, balances, a block height and a clock, persisted in redb.
//!
//! Every call is one block. The contract's storage lives in memory as the VM's
//! external storage; after each successful call the changed keys, the balances and the
//! block height are committed to redb in one transaction, so a killed process loses
//! nothing that was reported as done. A call that aborts changes nothing but the block
//! height (its deposit returns to the signer).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use near_parameters::{RuntimeConfig, RuntimeConfigStore};
use near_primitives_core::account::AccountContract;
use near_primitives_core::hash::{hash, CryptoHash};
use near_primitives_core::types::{AccountId, Balance, Gas};
use near_vm_runner::logic::mocks::mock_external::{MockAction, MockedExternal};
use near_vm_runner::logic::types::ReturnData;
use near_vm_runner::logic::VMContext;
use near_vm_runner::{ContractCode, ContractRuntimeCache, FilesystemContractRuntimeCache};
use redb::{Database, ReadableTable, TableDefinition};

use crate::ChainError;

const STORAGE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("contract_storage");
const ACCOUNTS: TableDefinition<&str, u128> = TableDefinition::new("accounts");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Accounts' keys, as a served chain checks calls against them: the ed25519 public
/// key (32 bytes) and the highest call nonce used (8 bytes, little-endian).
const ACCOUNT_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("account_keys");
/// NEP-297 events by (block height, index in block), as JSON.
const EVENTS: TableDefinition<(u64, u32), &str> = TableDefinition::new("events");

/// The oldest NEAR protocol version the contract claims to run on (docs/contract.md),
/// and the one whose runtime configuration the local chain applies: gas costs, limits,
/// wasm features and the host functions a contract may import. So the embedded chain
/// refuses whatever that protocol would refuse; a contract importing a host function
/// added later (gas keys arrive in 85, universal accounts in 88) cannot be deployed
/// on it. Later protocols run the contract unchanged.
pub const PROTOCOL_VERSION: u32 = 84;

/// Gas attached to calls by default: 300 Tgas, NEAR's per-transaction maximum.
pub const DEFAULT_GAS: u64 = 300_000_000_000_000;

/// One NEAR in yoctoNEAR.
pub const NEAR: u128 = 1_000_000_000_000_000_000_000_000;

/// What [`LocalChain::ensure_initialised`] gives the contract account for its storage
/// (NEAR charges 1 NEAR per 100 kB; the code alone is about 4).
pub const CONTRACT_BALANCE: u128 = 20 * NEAR;

/// The contract configuration of a development chain: small stakes and deposits, a
/// one-minute challenge period and unbonding delay.
pub fn dev_config() -> serde_json::Value {
    serde_json::json!({
        "min_stake": NEAR.to_string(), "min_deposit": (NEAR / 1000).to_string(),
        "unbonding_ns": "60000000000", "challenge_ns": "60000000000",
        "sever_penalty": (NEAR / 100).to_string(), "partition_slash_bps": 1000,
        "network": "embedded"})
}

/// Where block time comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// The machine's clock (several processes sharing one chain see real time).
    Wall,
    /// Starts at the given ns and moves only by one second per block and by
    /// [`LocalChain::advance`] (deterministic tests).
    Manual(u64),
}

/// What a call did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The method's return value (JSON for near-sdk contracts).
    pub value: Vec<u8>,
    /// Logs, including NEP-297 `EVENT_JSON:` lines.
    pub logs: Vec<String>,
    /// Gas burnt by the call.
    pub gas_burnt: u64,
    /// Transfers out of the contract, applied to the receivers' balances.
    pub transfers: Vec<(String, u128)>,
    /// The block the call was in.
    pub height: u64,
    /// Its block time.
    pub timestamp_ns: u64,
}

impl Outcome {
    /// The return value parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ChainError> {
        serde_json::from_slice(&self.value).map_err(|e| ChainError::Decode(e.to_string()))
    }

    /// The NEP-297 events logged, as JSON values.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.logs
            .iter()
            .filter_map(|l| l.strip_prefix("EVENT_JSON:"))
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect()
    }
}

/// The embedded chain.
pub struct LocalChain {
    db: Database,
    code: ContractCode,
    contract: AccountId,
    config: Arc<RuntimeConfig>,
    state: HashMap<Vec<u8>, Vec<u8>>,
    accounts: BTreeMap<String, u128>,
    height: u64,
    now_ns: u64,
    clock: Clock,
    /// The contract's compiled machine code (on disk beside the database, so it is
    /// compiled once per deployment) and the loaded module (in memory, so it is
    /// loaded once per process). Without the in-memory part every call loaded the
    /// module anew, and the runtime kept each one: about 7 MiB of resident memory a
    /// call, 3 GB in a served chain behind 50 nodes.
    cache: FilesystemContractRuntimeCache,
    /// Bumped whenever the state changes: what a view answered holds until then.
    generation: u64,
    /// Views answered at one (generation, height, time), by method and arguments: many
    /// nodes following one served chain ask the same views after every block, and a
    /// view otherwise copies the whole state and runs the contract each time.
    views: std::sync::Mutex<ViewCache>,
}

/// What views answered, and for which state.
#[derive(Default)]
struct ViewCache {
    stamp: (u64, u64, u64),
    answers: HashMap<(String, Vec<u8>), (Vec<u8>, u64)>,
    /// Views the contract ran (not answered from here), for tests.
    executed: u64,
}

/// Most distinct views remembered for one state.
const VIEW_CACHE_ENTRIES: usize = 1_024;

impl std::fmt::Debug for LocalChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalChain({} at height {})", self.contract, self.height)
    }
}

/// Loaded modules the in-memory cache is sized for (the runtime keeps room for four
/// times as many): the one contract, and what a redeploy brings.
const LOADED_MODULES: usize = 1;

/// The most compiled code kept on disk (`<database>.contracts/`); the oldest goes first.
const COMPILED_BYTES: u64 = 256 << 20;

/// The contract cache for the chain stored at `path`: its compiled code in
/// `<path>.contracts/`, its loaded module in memory.
fn module_cache(path: &Path) -> Result<FilesystemContractRuntimeCache, ChainError> {
    let name = path
        .file_name()
        .map(|n| format!("{}.contracts", n.to_string_lossy()))
        .unwrap_or_else(|| "chain.contracts".into());
    let home = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // near-vm-runner first moves a legacy cache from `<home>/<store>/contracts` to the
    // new path; a store name of our own makes that a path that never exists, so no
    // directory of the user's beside the database is ever moved.
    let store = format!("{name}.legacy");
    FilesystemContractRuntimeCache::with_memory_cache(
        home,
        Some(store.as_str()),
        &name,
        LOADED_MODULES,
        None,
        COMPILED_BYTES,
        near_vm_runner::noop_background_spawner(),
    )
    .map_err(|e| {
        ChainError::Db(format!(
            "the contract cache in {}: {e}",
            home.join(&name).display()
        ))
    })
}

fn db_err(e: impl std::fmt::Display) -> ChainError {
    ChainError::Db(e.to_string())
}

fn account(id: &str) -> Result<AccountId, ChainError> {
    id.parse()
        .map_err(|e| ChainError::BadAccount(format!("{id}: {e}")))
}

fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl LocalChain {
    /// Opens (or creates) the chain stored at `path`, running `wasm` as `contract`.
    /// An existing chain keeps its state; if the wasm differs from the one it ran
    /// before, the new code is used on the old state (a redeploy).
    pub fn open(
        path: &Path,
        wasm: &[u8],
        contract: &str,
        clock: Clock,
    ) -> Result<LocalChain, ChainError> {
        Self::open_at(path, wasm, contract, clock, PROTOCOL_VERSION)
    }

    /// As [`LocalChain::open`], applying the runtime configuration of another NEAR
    /// protocol version (to see what it would accept).
    pub fn open_at(
        path: &Path,
        wasm: &[u8],
        contract: &str,
        clock: Clock,
        protocol_version: u32,
    ) -> Result<LocalChain, ChainError> {
        let db = Database::create(path).map_err(db_err)?;
        let mut state = HashMap::new();
        let mut accounts = BTreeMap::new();
        let (mut height, mut now_ns) = (0, 0);
        {
            let w = db.begin_write().map_err(db_err)?;
            // Create the tables on first open.
            w.open_table(STORAGE).map_err(db_err)?;
            w.open_table(ACCOUNTS).map_err(db_err)?;
            w.open_table(META).map_err(db_err)?;
            w.open_table(EVENTS).map_err(db_err)?;
            w.open_table(ACCOUNT_KEYS).map_err(db_err)?;
            w.commit().map_err(db_err)?;
        }
        {
            let r = db.begin_read().map_err(db_err)?;
            for item in r
                .open_table(STORAGE)
                .map_err(db_err)?
                .iter()
                .map_err(db_err)?
            {
                let (k, v) = item.map_err(db_err)?;
                state.insert(k.value().to_vec(), v.value().to_vec());
            }
            for item in r
                .open_table(ACCOUNTS)
                .map_err(db_err)?
                .iter()
                .map_err(db_err)?
            {
                let (k, v) = item.map_err(db_err)?;
                accounts.insert(k.value().to_string(), v.value());
            }
            let meta = r.open_table(META).map_err(db_err)?;
            if let Some(h) = meta.get("height").map_err(db_err)? {
                height = h.value();
            }
            if let Some(t) = meta.get("now_ns").map_err(db_err)? {
                now_ns = t.value();
            }
        }
        if let Clock::Manual(start) = clock {
            now_ns = now_ns.max(start);
        }
        let store = RuntimeConfigStore::new(None);
        let config = store.get_config(protocol_version).clone();
        let contract_id = account(contract)?;
        accounts.entry(contract.to_string()).or_insert(0);
        Ok(LocalChain {
            db,
            code: ContractCode::new(wasm.to_vec(), None),
            contract: contract_id,
            config,
            state,
            accounts,
            height,
            now_ns,
            clock,
            cache: module_cache(path)?,
            generation: 0,
            views: std::sync::Mutex::default(),
        })
    }

    /// Initialises the contract with `config` (the contract's `Config` as JSON) unless
    /// it already is, first giving the contract account [`CONTRACT_BALANCE`] for its
    /// storage; returns whether it did.
    pub fn ensure_initialised(&mut self, config: serde_json::Value) -> Result<bool, ChainError> {
        if self.initialised() {
            return Ok(false);
        }
        let contract = self.contract.to_string();
        if self.balance(&contract).unwrap_or(0) < CONTRACT_BALANCE {
            self.fund(&contract, CONTRACT_BALANCE)?;
        }
        self.call_json(&contract, "new", serde_json::json!({ "config": config }), 0)?;
        Ok(true)
    }

    /// The contract account.
    pub fn contract(&self) -> &str {
        self.contract.as_str()
    }

    /// Current block height.
    pub fn height(&self) -> u64 {
        self.height
    }

    /// Current block time.
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    /// Whether the contract's state exists (it has been initialised).
    pub fn initialised(&self) -> bool {
        self.state.contains_key(b"STATE".as_slice())
    }

    /// An account's balance.
    pub fn balance(&self, id: &str) -> Option<u128> {
        self.accounts.get(id).copied()
    }

    /// Creates an account with `balance` (or tops it up): the faucet of a local chain.
    pub fn fund(&mut self, id: &str, balance: u128) -> Result<(), ChainError> {
        account(id)?;
        // Balances are part of what a view sees (the contract's own): answer afresh.
        self.generation = self.generation.wrapping_add(1);
        let slot = self.accounts.entry(id.to_string()).or_insert(0);
        *slot = slot.checked_add(balance).ok_or(ChainError::Overflow)?;
        let total = *slot;
        let w = self.db.begin_write().map_err(db_err)?;
        w.open_table(ACCOUNTS)
            .map_err(db_err)?
            .insert(id, total)
            .map_err(db_err)?;
        w.commit().map_err(db_err)
    }

    /// The public key an account's calls must be signed with, and the highest nonce
    /// it has used (see `serve`).
    pub fn account_key(&self, id: &str) -> Result<Option<([u8; 32], u64)>, ChainError> {
        let r = self.db.begin_read().map_err(db_err)?;
        let t = r.open_table(ACCOUNT_KEYS).map_err(db_err)?;
        let Some(v) = t.get(id).map_err(db_err)? else {
            return Ok(None);
        };
        let bytes = v.value();
        let key: [u8; 32] = bytes
            .get(..32)
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| ChainError::Db(format!("account key of {id} is damaged")))?;
        let nonce = bytes
            .get(32..40)
            .and_then(|n| n.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| ChainError::Db(format!("account nonce of {id} is damaged")))?;
        Ok(Some((key, nonce)))
    }

    /// Records an account's key and highest nonce, durably.
    pub fn set_account_key(
        &mut self,
        id: &str,
        key: [u8; 32],
        nonce: u64,
    ) -> Result<(), ChainError> {
        account(id)?;
        let mut bytes = key.to_vec();
        bytes.extend_from_slice(&nonce.to_le_bytes());
        let w = self.db.begin_write().map_err(db_err)?;
        w.open_table(ACCOUNT_KEYS)
            .map_err(db_err)?
            .insert(id, bytes.as_slice())
            .map_err(db_err)?;
        w.commit().map_err(db_err)
    }

    /// Moves the clock forward.
    pub fn advance(&mut self, ns: u64) {
        self.now_ns = self.now_ns.saturating_add(ns);
    }

    fn next_block(&mut self) {
        self.height = self.height.saturating_add(1);
        self.now_ns = match self.clock {
            Clock::Wall => wall_ns().max(self.now_ns.saturating_add(1)),
            Clock::Manual(_) => self.now_ns.saturating_add(1_000_000_000),
        };
    }

    fn context(
        &self,
        signer: &AccountId,
        args: &[u8],
        deposit: u128,
        gas: u64,
        view: bool,
    ) -> VMContext {
        let contract_balance = self
            .accounts
            .get(self.contract.as_str())
            .copied()
            .unwrap_or(0);
        let storage_usage = self.storage_usage(&self.state);
        VMContext {
            current_account_id: self.contract.clone(),
            signer_account_id: signer.clone(),
            signer_account_pk: vec![0; 33],
            predecessor_account_id: signer.clone(),
            refund_to_account_id: signer.clone(),
            input: Rc::from(args.to_vec()),
            promise_results: Vec::new().into(),
            block_height: self.height,
            block_timestamp: self.now_ns,
            epoch_height: self.height / 43_200,
            account_balance: Balance::from_yoctonear(contract_balance),
            account_locked_balance: Balance::ZERO,
            storage_usage,
            account_contract: AccountContract::Local(*self.code.hash()),
            attached_deposit: Balance::from_yoctonear(deposit),
            prepaid_gas: Gas::from_gas(gas),
            random_seed: hash(&self.height.to_le_bytes()).as_ref().to_vec(),
            view_config: view.then_some(near_primitives_core::config::ViewConfig {
                max_gas_burnt: Gas::from_gas(gas),
            }),
            output_data_receivers: vec![],
        }
    }

    /// Bytes the contract account occupies, counted as NEAR does: the account record,
    /// the code, and per storage entry its key, its value and a fixed overhead.
    fn storage_usage(&self, state: &HashMap<Vec<u8>, Vec<u8>>) -> u64 {
        let fees = &self.config.fees.storage_usage_config;
        let entries = state.iter().fold(0u64, |acc, (k, v)| {
            acc.saturating_add((k.len() + v.len()) as u64)
                .saturating_add(fees.num_extra_bytes_record)
        });
        entries
            .saturating_add(fees.num_bytes_account)
            .saturating_add(self.code.code().len() as u64)
    }

    /// Runs `method` with `state` as storage. Returns the outcome and the external.
    fn execute(
        &self,
        state: HashMap<Vec<u8>, Vec<u8>>,
        context: &VMContext,
        method: &str,
    ) -> Result<(near_vm_runner::logic::VMOutcome, MockedExternal), ChainError> {
        let mut ext = MockedExternal::with_code(self.code.clone());
        ext.fake_trie = state;
        let wasm_config = self.config.wasm_config.clone();
        let gas_counter = context.make_gas_counter(&wasm_config);
        let cache: &dyn ContractRuntimeCache = &self.cache;
        let prepared = near_vm_runner::prepare(&ext, wasm_config, Some(cache), gas_counter, method);
        let outcome = near_vm_runner::run(prepared, &mut ext, context, self.config.fees.clone())
            .map_err(|e| ChainError::Vm(e.to_string()))?;
        Ok((outcome, ext))
    }

    /// A read-only call: nothing changes, whatever the method tries.
    pub fn view(&self, method: &str, args: &[u8]) -> Result<Vec<u8>, ChainError> {
        self.view_with_gas(method, args).map(|(out, _)| out)
    }

    /// [`LocalChain::view`], with the gas the view burnt (NEAR limits a view's gas as
    /// it limits a call's; benchmarks watch it).
    pub fn view_with_gas(&self, method: &str, args: &[u8]) -> Result<(Vec<u8>, u64), ChainError> {
        let stamp = (self.generation, self.height, self.now_ns);
        let key = (method.to_string(), args.to_vec());
        if let Ok(mut cache) = self.views.lock() {
            if cache.stamp != stamp {
                cache.stamp = stamp;
                cache.answers.clear();
            }
            if let Some(answer) = cache.answers.get(&key) {
                return Ok(answer.clone());
            }
        }
        let answer = self.run_view(method, args)?;
        if let Ok(mut cache) = self.views.lock() {
            cache.executed = cache.executed.saturating_add(1);
            if cache.stamp == stamp && cache.answers.len() < VIEW_CACHE_ENTRIES {
                cache.answers.insert(key, answer.clone());
            }
        }
        Ok(answer)
    }

    /// How many views the contract has run (the rest were answered from the cache).
    pub fn views_executed(&self) -> u64 {
        self.views.lock().map_or(0, |c| c.executed)
    }

    fn run_view(&self, method: &str, args: &[u8]) -> Result<(Vec<u8>, u64), ChainError> {
        let ctx = self.context(&self.contract, args, 0, DEFAULT_GAS, true);
        let (outcome, _) = self.execute(self.state.clone(), &ctx, method)?;
        if let Some(err) = outcome.aborted {
            return Err(ChainError::Aborted {
                method: method.to_string(),
                message: err.to_string(),
                logs: outcome.logs,
            });
        }
        let gas = outcome.burnt_gas.as_gas();
        Ok((
            match outcome.return_data {
                ReturnData::Value(v) => v,
                _ => Vec::new(),
            },
            gas,
        ))
    }

    /// A view returning JSON.
    pub fn view_json<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        args: serde_json::Value,
    ) -> Result<T, ChainError> {
        let out = self.view(method, args.to_string().as_bytes())?;
        serde_json::from_slice(&out).map_err(|e| ChainError::Decode(e.to_string()))
    }

    /// A transaction from `signer` calling `method` with `args` and `deposit` attached,
    /// in a block of its own. Committed durably before it returns.
    pub fn call(
        &mut self,
        signer: &str,
        method: &str,
        args: &[u8],
        deposit: u128,
        gas: u64,
    ) -> Result<Outcome, ChainError> {
        let signer_id = account(signer)?;
        let have = self
            .balance(signer)
            .ok_or_else(|| ChainError::UnknownAccount(signer.to_string()))?;
        if have < deposit {
            return Err(ChainError::InsufficientBalance {
                account: signer.to_string(),
                have,
                need: deposit,
            });
        }
        self.next_block();
        let ctx = self.context(&signer_id, args, deposit, gas, false);
        let before = self.state.clone();
        let (outcome, ext) = self.execute(self.state.clone(), &ctx, method)?;
        if let Some(err) = outcome.aborted {
            self.persist_meta()?;
            return Err(ChainError::Aborted {
                method: method.to_string(),
                message: err.to_string(),
                logs: outcome.logs,
            });
        }
        // Balances: the deposit moved to the contract, whose balance after the call is
        // the VM's; transfers it made go to their receivers.
        let mut accounts = self.accounts.clone();
        let signer_balance = have.checked_sub(deposit).ok_or(ChainError::Overflow)?;
        accounts.insert(signer.to_string(), signer_balance);
        accounts.insert(self.contract.to_string(), outcome.balance.as_yoctonear());
        let mut receivers: HashMap<u64, String> = HashMap::new();
        let mut transfers = Vec::new();
        for (i, action) in ext.action_log.iter().enumerate() {
            match action {
                MockAction::CreateReceipt { receiver_id, .. } => {
                    receivers.insert(i as u64, receiver_id.to_string());
                }
                MockAction::Transfer {
                    receipt_index,
                    deposit,
                } => {
                    let to = receivers.get(receipt_index).cloned().ok_or_else(|| {
                        ChainError::Vm(format!("transfer on unknown receipt {receipt_index}"))
                    })?;
                    let amount = deposit.as_yoctonear();
                    let slot = accounts.entry(to.clone()).or_insert(0);
                    *slot = slot.checked_add(amount).ok_or(ChainError::Overflow)?;
                    transfers.push((to, amount));
                }
                _ => {}
            }
        }
        let state = ext.fake_trie;
        // Storage staking: like NEAR, refuse a call that leaves the contract holding
        // less than the cost of the bytes it stores.
        let usage = self.storage_usage(&state);
        let need = self
            .config
            .fees
            .storage_usage_config
            .storage_amount_per_byte
            .as_yoctonear()
            .saturating_mul(u128::from(usage));
        let have_after = outcome.balance.as_yoctonear();
        if have_after < need {
            self.persist_meta()?;
            return Err(ChainError::LackBalanceForState {
                account: self.contract.to_string(),
                have: have_after,
                need,
            });
        }
        let events: Vec<&str> = outcome
            .logs
            .iter()
            .filter_map(|l| l.strip_prefix("EVENT_JSON:"))
            .collect();
        self.commit(&before, &state, &accounts, &events)?;
        self.state = state;
        self.accounts = accounts;
        self.generation = self.generation.wrapping_add(1);
        Ok(Outcome {
            value: match outcome.return_data {
                ReturnData::Value(v) => v,
                _ => Vec::new(),
            },
            logs: outcome.logs,
            gas_burnt: outcome.burnt_gas.as_gas(),
            transfers,
            height: self.height,
            timestamp_ns: self.now_ns,
        })
    }

    /// A call with JSON arguments.
    pub fn call_json(
        &mut self,
        signer: &str,
        method: &str,
        args: serde_json::Value,
        deposit: u128,
    ) -> Result<Outcome, ChainError> {
        self.call(
            signer,
            method,
            args.to_string().as_bytes(),
            deposit,
            DEFAULT_GAS,
        )
    }

    fn persist_meta(&self) -> Result<(), ChainError> {
        let w = self.db.begin_write().map_err(db_err)?;
        {
            let mut meta = w.open_table(META).map_err(db_err)?;
            meta.insert("height", self.height).map_err(db_err)?;
            meta.insert("now_ns", self.now_ns).map_err(db_err)?;
        }
        w.commit().map_err(db_err)
    }

    /// Writes the changed storage keys, the balances and the block in one transaction.
    fn commit(
        &self,
        before: &HashMap<Vec<u8>, Vec<u8>>,
        after: &HashMap<Vec<u8>, Vec<u8>>,
        accounts: &BTreeMap<String, u128>,
        events: &[&str],
    ) -> Result<(), ChainError> {
        let w = self.db.begin_write().map_err(db_err)?;
        {
            let mut ev = w.open_table(EVENTS).map_err(db_err)?;
            for (i, e) in events.iter().enumerate() {
                let i = u32::try_from(i).unwrap_or(u32::MAX);
                ev.insert((self.height, i), *e).map_err(db_err)?;
            }
            let mut t = w.open_table(STORAGE).map_err(db_err)?;
            for (k, v) in after {
                if before.get(k) != Some(v) {
                    t.insert(k.as_slice(), v.as_slice()).map_err(db_err)?;
                }
            }
            for k in before.keys() {
                if !after.contains_key(k) {
                    t.remove(k.as_slice()).map_err(db_err)?;
                }
            }
            let mut a = w.open_table(ACCOUNTS).map_err(db_err)?;
            for (id, bal) in accounts {
                if self.accounts.get(id) != Some(bal) {
                    a.insert(id.as_str(), *bal).map_err(db_err)?;
                }
            }
            let mut meta = w.open_table(META).map_err(db_err)?;
            meta.insert("height", self.height).map_err(db_err)?;
            meta.insert("now_ns", self.now_ns).map_err(db_err)?;
        }
        w.commit().map_err(db_err)
    }

    /// The NEP-297 events of blocks after `height` (oldest first), as `(height, event)`:
    /// whole blocks, stopping at the first block boundary after `limit` events. Nodes follow the chain by asking again from the last height.
    pub fn events_since(
        &self,
        height: u64,
        limit: usize,
    ) -> Result<Vec<(u64, serde_json::Value)>, ChainError> {
        let r = self.db.begin_read().map_err(db_err)?;
        let t = r.open_table(EVENTS).map_err(db_err)?;
        let mut out = Vec::new();
        for item in t.range((height.saturating_add(1), 0)..).map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            // Whole blocks only, so that asking again from the last height misses nothing.
            if out.len() >= limit && out.last().map(|(h, _)| *h) != Some(k.value().0) {
                break;
            }
            let value =
                serde_json::from_str(v.value()).map_err(|e| ChainError::Decode(e.to_string()))?;
            out.push((k.value().0, value));
        }
        Ok(out)
    }

    /// [`LocalChain::events_since`] with the height it is complete through.
    pub fn event_page(&self, height: u64, limit: usize) -> Result<crate::EventPage, ChainError> {
        let events = self.events_since(height, limit)?;
        let through = if events.len() >= limit {
            events.last().map_or(self.height, |(h, _)| *h)
        } else {
            self.height.max(height)
        };
        Ok(crate::EventPage { events, through })
    }

    /// The hash of the code being run.
    pub fn code_hash(&self) -> CryptoHash {
        *self.code.hash()
    }
}

//! What every part of the contract uses: events, transfers, signature checks, and
//! the parsing and limits of arguments.

use near_sdk::json_types::U128;
use near_sdk::serde_json::{self, json};
use near_sdk::{env, AccountId, NearToken};
use por_protocol::crypto::Signable;

use crate::error::{ContractError, R};

/// Schedules a transfer of `amount` yoctoNEAR to `to` (nothing for zero).
///
/// Through the two host functions a transfer needs, not near-sdk's `Promise`: a
/// `Promise` links every action NEAR has, and with them host functions that older
/// protocols lack (gas keys, universal accounts), so a wasm using it cannot even be
/// deployed there. `chain/tests/wasm_build.rs` checks the import list.
pub(crate) fn transfer(to: &AccountId, amount: u128) {
    if amount > 0 {
        let promise = env::promise_batch_create(to);
        env::promise_batch_action_transfer(promise, NearToken::from_yoctonear(amount));
    }
}

/// Sends both sides their payout. Two independent transfers: NEAR does not allow a
/// method to return a joint promise, so they are scheduled and the amounts returned.
pub(crate) fn pay_out(a: AccountId, pa: u128, b: AccountId, pb: u128) -> [U128; 2] {
    transfer(&a, pa);
    transfer(&b, pb);
    [U128(pa), U128(pb)]
}

/// Most accounts a `node_disconnected` event lists (the log budget is 16 KiB a call).
pub(crate) const MAX_LISTED: usize = 64;

pub(crate) fn emit(event: &str, data: serde_json::Value) {
    let body = json!({"standard": "por", "version": "1.0.0", "event": event, "data": [data]});
    env::log_str(&format!("EVENT_JSON:{body}"));
}

pub(crate) fn pair(x: &AccountId, y: &AccountId) -> (AccountId, AccountId) {
    if x < y {
        (x.clone(), y.clone())
    } else {
        (y.clone(), x.clone())
    }
}

/// Most network addresses a node may publish (each costs the contract storage).
pub const MAX_ADDRESSES: usize = 8;
/// Longest network address a node may publish, in bytes.
pub const MAX_ADDRESS_LEN: usize = 128;

pub(crate) fn check_addresses(addresses: &[String]) -> R<()> {
    if addresses.len() > MAX_ADDRESSES || addresses.iter().any(|a| a.len() > MAX_ADDRESS_LEN) {
        return Err(ContractError::BadAddresses);
    }
    Ok(())
}

pub(crate) fn hex32(s: &str) -> R<[u8; 32]> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    if s.len() != 64 {
        return Err(ContractError::Invalid("a node key is 64 hex digits".into()));
    }
    por_protocol::hex::decode(s).ok_or_else(|| ContractError::Invalid("node key is not hex".into()))
}

pub(crate) fn to_hex(b: &[u8]) -> String {
    por_protocol::hex::encode(b)
}

pub(crate) fn verify<T: Signable>(
    deployment: &[u8; 32],
    value: &T,
    sig: &por_protocol::Signature,
    key: &[u8; 32],
    what: &'static str,
) -> R<()> {
    let bytes = value
        .signing_bytes(&por_protocol::Deployment(por_protocol::Hash(*deployment)))
        .map_err(|e| ContractError::Malformed {
            what,
            detail: e.to_string(),
        })?;
    if env::ed25519_verify(&sig.0, &bytes, key) {
        Ok(())
    } else {
        Err(ContractError::BadSignature(what))
    }
}

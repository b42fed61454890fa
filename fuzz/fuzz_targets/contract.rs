//! The contract's methods with arbitrary arguments, on near-sdk's mocked blockchain
//! (the unit harness of `contract/src/tests.rs`).
//!
//! The input is a sequence of calls from four accounts: register, stake, unstake,
//! withdraw, propose, confirm and cancel channels, sign channel updates (honestly:
//! each direction's cumulative only grows), submit any choice of them to a
//! cooperative or adversarial close or a challenge, finalize, sever with an honest or
//! a garbage notice, and let time pass. A refused call is reverted, as NEAR reverts a
//! panicking call (the harness replays the calls that succeeded).
//!
//! Oracles, after every call that succeeds:
//! - no panic, whatever the arguments;
//! - money is conserved: stakes (unbonding included), the deposits of every channel
//!   not yet paid out and the pool add up to what was attached minus what was paid;
//! - a channel's recorded payments never go down, and each is the largest cumulative
//!   of that direction submitted in a successful call (a payee's proof always wins);
//! - a payout splits exactly the channel's deposits, as those payments say.
#![no_main]

use libfuzzer_sys::fuzz_target;
use near_sdk::json_types::{Base64VecU8, U128, U64};
use near_sdk::test_utils::VMContextBuilder;
use near_sdk::AccountId;
use por_contract::{ChannelState, Config, PorContract, Terms};
use por_protocol::types::{
    ChannelId, ChannelUpdate, Memo, RequestId, SeverNotice, SeverReason, SignedSeverNotice,
    SignedUpdate,
};
use por_protocol::{wire, Amount, Deployment, Keypair};

const NEAR: u128 = 1_000_000_000_000_000_000_000_000;
const SEC: u64 = 1_000_000_000;
const ACCOUNTS: usize = 4;

fn config() -> Config {
    Config {
        min_stake: U128(10 * NEAR),
        min_deposit: U128(NEAR),
        unbonding_ns: U64(100 * SEC),
        challenge_ns: U64(60 * SEC),
        sever_penalty: U128(NEAR / 10),
        partition_slash_bps: 1_000,
        network: "test".into(),
    }
}

fn acc(i: usize) -> AccountId {
    format!("n{i}.test").parse().expect("account id")
}

fn key(i: usize) -> Keypair {
    Keypair::from_seed([i as u8 + 1; 32])
}

fn hex(k: &Keypair) -> String {
    k.id().0.iter().map(|b| format!("{b:02x}")).collect()
}

fn terms(latency_ms: u64) -> Terms {
    Terms {
        latency_ms,
        base_cost: U128(10),
        byte_cost: U128(1),
        sync_interval_ms: 1000,
        sync_phase_ms: 0,
        max_late_fee_rate: U128(1_000),
        bandwidth: por_protocol::types::EdgeTerms::DEFAULT_BANDWIDTH,
    }
}

const STAKES: [u128; 4] = [0, 10 * NEAR - 1, 10 * NEAR, 100 * NEAR];
const AMOUNTS: [u128; 4] = [0, 1, NEAR, 50 * NEAR];
const DEPOSITS: [u128; 4] = [0, NEAR - 1, NEAR, 5 * NEAR];
const STEPS: [u128; 4] = [0, 1, NEAR / 3, 6 * NEAR];
const WAITS: [u64; 4] = [SEC, 60 * SEC, 100 * SEC, 1_000 * SEC];

/// One call, its arguments drawn from four input bytes.
#[derive(Clone, Copy, Debug)]
struct Op {
    kind: u8,
    x: u8,
    y: u8,
    z: u8,
}

/// What the harness knows of a channel it proposed.
#[derive(Clone, Debug, Default)]
struct Chan {
    id: u64,
    a: usize,
    b: usize,
    deposits: [u128; 2],
    /// Updates signed so far per direction (0: a pays b), oldest first.
    signed: [Vec<(u64, u128, Base64VecU8)>; 2],
    /// The largest cumulative per direction submitted in a call that succeeded.
    submitted: [u128; 2],
    settled: bool,
}

#[derive(Clone, Debug, Default)]
struct Model {
    now: u64,
    chans: Vec<Chan>,
    attached: u128,
    paid: u128,
}

/// Sets the block time, keeping the contract's storage (as `testing_env!` does) or,
/// with `fresh`, emptying it. The runtime configuration is parsed once: parsing it
/// per call, as `testing_env!` does, costs most of an execution.
fn env(now: u64, fresh: bool) {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    static CONFIG: OnceLock<(
        near_parameters::vm::Config,
        near_parameters::RuntimeFeesConfig,
    )> = OnceLock::new();
    let (vm, fees) = CONFIG.get_or_init(|| {
        (
            near_sdk::test_vm_config(),
            near_parameters::RuntimeFeesConfig::test(),
        )
    });
    let storage = if fresh {
        HashMap::new()
    } else {
        near_sdk::mock::with_mocked_blockchain(|b| b.take_storage())
    };
    near_sdk::env::set_blockchain_interface(near_sdk::MockedBlockchain::new(
        VMContextBuilder::new().block_timestamp(now).build(),
        vm.clone(),
        fees.clone(),
        Vec::new(),
        storage,
        HashMap::new(),
        None,
    ));
}

fn at(now: u64) {
    env(now, false);
}

fn deployment() -> Deployment {
    Deployment::of("test", near_sdk::env::current_account_id().as_str())
}

impl Model {
    fn chan(&self, y: u8) -> Option<usize> {
        let n = self.chans.len();
        let i = usize::from(y) % (n + 1);
        (i < n).then_some(i)
    }

    fn chan_id(&self, y: u8) -> u64 {
        self.chan(y).map_or(999, |i| self.chans[i].id)
    }

    /// The updates a mask picks for channel `i`: per direction none, the latest, the
    /// first, or both.
    fn pick(&self, i: Option<usize>, mask: u8) -> (Vec<Base64VecU8>, [u128; 2]) {
        let mut out = Vec::new();
        let mut best = [0u128; 2];
        let Some(i) = i else {
            return (out, best);
        };
        for dir in 0..2 {
            let s = &self.chans[i].signed[dir];
            let m = (mask >> (dir * 2)) & 3;
            let mut take = |u: &(u64, u128, Base64VecU8)| {
                best[dir] = best[dir].max(u.1);
                out.push(u.2.clone());
            };
            if m & 1 == 1 {
                if let Some(u) = s.last() {
                    take(u);
                }
            }
            if m & 2 == 2 {
                if let Some(u) = s.first() {
                    take(u);
                }
            }
        }
        if mask & 0x10 != 0 {
            out.reverse();
        }
        (out, best)
    }

    fn submitted(&mut self, i: Option<usize>, best: [u128; 2]) {
        if let Some(i) = i {
            let c = &mut self.chans[i];
            c.submitted = [c.submitted[0].max(best[0]), c.submitted[1].max(best[1])];
        }
    }

    /// A payout of `(a, pa, b, pb)` for channel `i`: exactly its deposits, split as
    /// the largest payments submitted say.
    fn settle(&mut self, i: Option<usize>, out: (AccountId, u128, AccountId, u128)) {
        let (a, pa, b, pb) = out;
        self.paid = self
            .paid
            .checked_add(pa)
            .and_then(|p| p.checked_add(pb))
            .expect("paid");
        let Some(i) = i else {
            panic!("a payout for a channel the harness never opened");
        };
        let c = &mut self.chans[i];
        assert!(!c.settled, "channel {} paid out twice", c.id);
        c.settled = true;
        assert_eq!((a, b), (acc(c.a), acc(c.b)));
        let total = c.deposits[0] + c.deposits[1];
        assert_eq!(
            pa + pb,
            total,
            "channel {} pays out other than its deposits",
            c.id
        );
        let want_a = (c.deposits[0] + c.submitted[1])
            .saturating_sub(c.submitted[0])
            .min(total);
        assert_eq!(pa, want_a, "channel {}: {c:?}", c.id);
    }
}

/// The encoding of `u` signed, made once per update: signing is deterministic, and a
/// replay after every refused call would otherwise sign every update again.
fn signed_once(
    u: &ChannelUpdate,
    sign: impl FnOnce() -> Result<Vec<u8>, String>,
) -> Result<Vec<u8>, String> {
    use std::collections::HashMap;
    thread_local! {
        static SIGNED: std::cell::RefCell<HashMap<Vec<u8>, Vec<u8>>> = Default::default();
    }
    let k = wire::encode(u).map_err(|e| e.to_string())?;
    if let Some(raw) = SIGNED.with(|m| m.borrow().get(&k).cloned()) {
        return Ok(raw);
    }
    let raw = sign()?;
    SIGNED.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() > 100_000 {
            m.clear();
        }
        m.insert(k, raw.clone());
    });
    Ok(raw)
}

/// Applies `op`; `Err` where the contract refused it.
fn apply(c: &mut PorContract, m: &mut Model, op: Op) -> Result<(), String> {
    let Op { kind, x, y, z } = op;
    let i = usize::from(x) % ACCOUNTS;
    let e = |e: por_contract::ContractError| e.to_string();
    match kind % 16 {
        0 => {
            let stake = STAKES[usize::from(y % 4)];
            // Sometimes another account's key (refused), or a malformed one.
            let k = match z % 8 {
                0 => "zz".to_string(),
                1 => hex(&key((i + 1) % ACCOUNTS)),
                _ => hex(&key(i)),
            };
            c.do_register(acc(i), stake, k, vec![format!("n{i}:9000")])
                .map_err(e)?;
            m.attached += stake;
        }
        1 => {
            let amount = AMOUNTS[usize::from(y % 4)];
            c.do_add_stake(acc(i), amount, m.now).map_err(e)?;
            m.attached += amount;
        }
        2 => c
            .do_unstake(acc(i), AMOUNTS[usize::from(y % 4)], m.now)
            .map_err(e)?,
        3 => {
            let out = c.do_withdraw(acc(i), m.now).map_err(e)?;
            m.paid += out;
        }
        4 => {
            let j = usize::from(y) % ACCOUNTS;
            let deposit = DEPOSITS[usize::from(z % 4)];
            let id = c
                .do_propose(acc(i), deposit, acc(j), terms(u64::from(z >> 2)))
                .map_err(e)?;
            m.attached += deposit;
            m.chans.push(Chan {
                id,
                a: i,
                b: j,
                deposits: [deposit, 0],
                ..Chan::default()
            });
        }
        5 => {
            let ch = m.chan(y);
            let deposit = DEPOSITS[usize::from(z % 4)];
            c.do_confirm(acc(i), deposit, m.chan_id(y)).map_err(e)?;
            m.attached += deposit;
            let ch = ch.expect("confirmed a channel the harness never proposed");
            m.chans[ch].deposits[1] = deposit;
        }
        6 => {
            let ch = m.chan(y);
            let (to, refund) = c.do_cancel(acc(i), m.chan_id(y)).map_err(e)?;
            let ch = &mut m.chans[ch.expect("cancelled an unknown channel")];
            assert_eq!(to, acc(ch.a));
            assert_eq!(
                refund, ch.deposits[0],
                "a cancel refunds the proposer's deposit"
            );
            assert!(!ch.settled);
            ch.settled = true;
            m.paid += refund;
        }
        7 => {
            // Sign (not a call): the next update of one direction, honestly.
            let Some(ch) = m.chan(y) else { return Ok(()) };
            let dep = deployment();
            let c = &mut m.chans[ch];
            let dir = usize::from(x & 1);
            let (payer, payee) = if dir == 0 { (c.a, c.b) } else { (c.b, c.a) };
            let (seq, cum) = c.signed[dir].last().map_or((0, 0), |u| (u.0, u.1));
            let (seq, cum) = (seq + 1, cum + STEPS[usize::from(z % 4)]);
            let u = ChannelUpdate {
                channel: ChannelId(c.id),
                payer: key(payer).id(),
                payee: key(payee).id(),
                seq,
                cumulative: Amount(cum),
                memo: Memo::Refund {
                    request: RequestId([z; 16]),
                    amount: Amount(1),
                },
            };
            let raw = signed_once(&u, || {
                let su = SignedUpdate::sign_alone(&key(payer), &dep, u.clone())
                    .map_err(|e| e.to_string())?;
                wire::encode(&su).map_err(|e| e.to_string())
            })?;
            let raw = Base64VecU8(raw);
            c.signed[dir].push((seq, cum, raw));
            return Ok(());
        }
        8..=11 => {
            let ch = m.chan(y);
            let id = m.chan_id(y);
            let (mut ups, best) = m.pick(ch, z);
            if z & 0x20 != 0 {
                // Garbage among them: the whole call is refused.
                ups.push(Base64VecU8(vec![z; usize::from(y % 40)]));
            }
            match kind % 16 {
                8 => c.do_propose_close(acc(i), id, ups, m.now).map_err(e)?,
                9 => {
                    let out = c.do_confirm_close(acc(i), id, ups).map_err(e)?;
                    m.submitted(ch, best);
                    m.settle(ch, out);
                    return Ok(());
                }
                10 => {
                    c.do_start_close(acc(i), id, ups, m.now).map_err(e)?;
                }
                _ => c.do_challenge(acc(i), id, ups, m.now).map_err(e)?,
            }
            m.submitted(ch, best);
        }
        12 => {
            let ch = m.chan(y);
            let out = c.do_finalize_close(m.chan_id(y), m.now).map_err(e)?;
            m.settle(ch, out);
        }
        13 => {
            let ch = m.chan(y);
            let raw = match (ch, z & 1) {
                (Some(ch), 0) => {
                    let c = &m.chans[ch];
                    let (by, peer) = if x & 1 == 0 { (c.a, c.b) } else { (c.b, c.a) };
                    let n = SeverNotice {
                        channel: ChannelId(c.id),
                        severer: key(by).id(),
                        peer: key(peer).id(),
                        reason: SeverReason::Unresponsive,
                        at_ms: u64::from(z),
                    };
                    let sig = key(by).sign(&deployment(), &n).map_err(|e| e.to_string())?;
                    wire::encode(&SignedSeverNotice { notice: n, sig })
                        .map_err(|e| e.to_string())?
                }
                _ => vec![z; usize::from(y % 100)],
            };
            c.do_sever(Base64VecU8(raw), m.now).map_err(e)?;
        }
        14 => m.now = m.now.saturating_add(WAITS[usize::from(x % 4)]),
        _ => c
            .do_update_addresses(acc(i), vec![format!("h{y}:{z}")])
            .map_err(e)?,
    }
    Ok(())
}

/// Checks the money and every channel's payments against the model.
fn check(c: &PorContract, m: &Model, before: &mut Vec<[u128; 2]>) {
    let mut held = c.get_pool().0;
    for i in 0..ACCOUNTS {
        if let Some(n) = c.get_node(acc(i)) {
            held += n.stake.0 + n.unbonding.map_or(0, |u| u.0 .0);
        }
    }
    for ch in c.get_channels(0, 1_000) {
        held += ch.deposit_a.0 + ch.deposit_b.0;
    }
    assert_eq!(
        held,
        m.attached - m.paid,
        "held {held}, attached {} paid {}",
        m.attached,
        m.paid
    );
    before.resize(m.chans.len(), [0, 0]);
    for (k, mc) in m.chans.iter().enumerate() {
        let Some(ch) = c.get_channel(U64(mc.id)) else {
            panic!("channel {} is gone", mc.id);
        };
        if mc.settled {
            assert!(matches!(
                ch.state,
                ChannelState::Closed | ChannelState::Cancelled
            ));
            continue;
        }
        let now = [ch.paid_ab.1 .0, ch.paid_ba.1 .0];
        assert!(
            now[0] >= before[k][0] && now[1] >= before[k][1],
            "a payment went down"
        );
        assert_eq!(
            now, mc.submitted,
            "channel {}: recorded payments {now:?}",
            mc.id
        );
        before[k] = now;
    }
}

fuzz_target!(|data: &[u8]| {
    let ops: Vec<Op> = data
        .chunks_exact(4)
        .take(48)
        .map(|b| Op {
            kind: b[0],
            x: b[1],
            y: b[2],
            z: b[3],
        })
        .collect();
    env(0, true);
    let mut c = Some(PorContract::new(config()));
    let mut m = Model::default();
    let mut ok: Vec<Op> = Vec::new();
    let mut before = Vec::new();
    for op in ops {
        at(m.now);
        let mut trial = m.clone();
        let Some(contract) = c.as_mut() else { return };
        match apply(contract, &mut trial, op) {
            Ok(()) => {
                m = trial;
                ok.push(op);
                at(m.now);
                check(contract, &m, &mut before);
            }
            Err(_) => {
                // NEAR reverts a refused call: start again and replay what succeeded.
                // The old contract goes first: dropping it flushes its collections.
                drop(c.take());
                env(0, true);
                let mut fresh = PorContract::new(config());
                let mut again = Model::default();
                for op in &ok {
                    at(again.now);
                    apply(&mut fresh, &mut again, *op).expect("a replayed call succeeds again");
                }
                c = Some(fresh);
                m = again;
            }
        }
    }
    // Flushed into this input's storage, not the next one's.
    drop(c);
});

//! Unit tests of every method, on near-sdk's mocked blockchain.
#![allow(clippy::unwrap_used)]

use near_sdk::json_types::{Base64VecU8, U128, U64};
use near_sdk::test_utils::{get_logs, VMContextBuilder};
use near_sdk::{testing_env, AccountId, NearToken};
use por_protocol::types::{
    ChannelId, ChannelUpdate, Memo, RequestId, SeverNotice, SeverReason, SignedSeverNotice,
    SignedUpdate,
};
use por_protocol::{wire, Amount, Deployment, Hash, Keypair, NodeId};

use super::*;
use crate::common::hex32;
use crate::graph::Split;

const NEAR: u128 = 1_000_000_000_000_000_000_000_000;
const SEC: u64 = 1_000_000_000;

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

/// The deployment the contract under test accepts signatures for.
fn dep() -> Deployment {
    Deployment::of("test", near_sdk::env::current_account_id().as_str())
}

fn acc(name: &str) -> AccountId {
    format!("{name}.test").parse().unwrap()
}

fn key(name: &str) -> Keypair {
    let mut seed = [0u8; 32];
    seed[..name.len()].copy_from_slice(name.as_bytes());
    Keypair::from_seed(seed)
}

fn hex(id: NodeId) -> String {
    id.0.iter().map(|b| format!("{b:02x}")).collect()
}

fn at(now: u64) {
    testing_env!(VMContextBuilder::new().block_timestamp(now).build());
}

fn terms() -> Terms {
    Terms {
        latency_ms: 100,
        base_cost: U128(10),
        byte_cost: U128(1),
        sync_interval_ms: 1000,
        sync_phase_ms: 0,
        max_late_fee_rate: U128(1_000),
        bandwidth: por_protocol::types::EdgeTerms::DEFAULT_BANDWIDTH,
    }
}

/// A contract with nodes `names` registered with 100 NEAR each.
fn setup(names: &[&str]) -> PorContract {
    at(0);
    let mut c = PorContract::new(config());
    for n in names {
        c.do_register(
            acc(n),
            100 * NEAR,
            hex(key(n).id()),
            vec![format!("{n}:9000")],
        )
        .unwrap();
    }
    c
}

/// Opens a channel x -> y with 5 NEAR each side.
fn open(c: &mut PorContract, x: &str, y: &str) -> u64 {
    let id = c.do_propose(acc(x), 5 * NEAR, acc(y), terms()).unwrap();
    c.do_confirm(acc(y), 5 * NEAR, id).unwrap();
    id
}

fn update(payer: &str, payee: &str, channel: u64, seq: u64, cumulative: u128) -> Base64VecU8 {
    let u = ChannelUpdate {
        channel: ChannelId(channel),
        payer: key(payer).id(),
        payee: key(payee).id(),
        seq,
        cumulative: Amount(cumulative),
        memo: Memo::Refund {
            request: RequestId([0; 16]),
            amount: Amount(1),
        },
    };
    Base64VecU8(wire::encode(&SignedUpdate::sign_alone(&key(payer), &dep(), u).unwrap()).unwrap())
}

fn notice(severer: &str, peer: &str, channel: u64) -> Base64VecU8 {
    let n = SeverNotice {
        channel: ChannelId(channel),
        severer: key(severer).id(),
        peer: key(peer).id(),
        reason: SeverReason::Unresponsive,
        at_ms: 0,
    };
    let sig = key(severer).sign(&dep(), &n).unwrap();
    Base64VecU8(wire::encode(&SignedSeverNotice { notice: n, sig }).unwrap())
}

fn stake(c: &PorContract, n: &str) -> u128 {
    c.get_node(acc(n)).unwrap().stake.0
}

fn events() -> Vec<String> {
    get_logs()
        .into_iter()
        .filter_map(|l| l.strip_prefix("EVENT_JSON:").map(str::to_string))
        .map(|j| {
            near_sdk::serde_json::from_str::<near_sdk::serde_json::Value>(&j).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn register_and_its_refusals() {
    let mut c = setup(&["alice"]);
    assert!(events().contains(&"node_registered".to_string()));
    let n = c.get_node(acc("alice")).unwrap();
    assert_eq!(
        (n.stake.0, n.addresses.len(), n.key.clone()),
        (100 * NEAR, 1, hex(key("alice").id()))
    );
    assert_eq!(
        c.get_account_of_key(hex(key("alice").id()).to_uppercase()),
        Some(acc("alice"))
    );
    assert_eq!(
        c.do_register(acc("bob"), NEAR, hex(key("bob").id()), vec![]),
        Err(ContractError::InsufficientDeposit {
            attached: NEAR,
            needed: 10 * NEAR
        })
    );
    assert!(matches!(
        c.do_register(acc("alice"), 100 * NEAR, hex(key("x").id()), vec![]),
        Err(ContractError::AlreadyRegistered(_))
    ));
    assert!(matches!(
        c.do_register(acc("bob"), 100 * NEAR, hex(key("alice").id()), vec![]),
        Err(ContractError::AlreadyRegistered(_))
    ));
    assert!(matches!(
        c.do_register(acc("bob"), 100 * NEAR, "zz".into(), vec![]),
        Err(ContractError::Invalid(_))
    ));
    assert_eq!(c.get_nodes(0, 10).len(), 1);
}

#[test]
fn stake_unstake_withdraw() {
    let mut c = setup(&["alice", "bob"]);
    c.do_add_stake(acc("alice"), 5 * NEAR, 0).unwrap();
    assert_eq!(stake(&c, "alice"), 105 * NEAR);
    assert!(matches!(
        c.do_add_stake(acc("nobody"), 1, 0),
        Err(ContractError::UnknownNode(_))
    ));
    assert_eq!(
        c.do_add_stake(acc("alice"), u128::MAX, 0),
        Err(ContractError::Overflow)
    );
    // With a live edge, stake may not drop under the minimum.
    open(&mut c, "alice", "bob");
    assert!(matches!(
        c.do_unstake(acc("alice"), 100 * NEAR, 0),
        Err(ContractError::InsufficientStake(_))
    ));
    assert!(matches!(
        c.do_unstake(acc("alice"), 1000 * NEAR, 0),
        Err(ContractError::InsufficientStake(_))
    ));
    c.do_unstake(acc("alice"), 50 * NEAR, 10).unwrap();
    assert_eq!(stake(&c, "alice"), 55 * NEAR);
    assert!(matches!(
        c.do_unstake(acc("alice"), NEAR, 10),
        Err(ContractError::Invalid(_))
    ));
    assert_eq!(
        c.do_withdraw(acc("alice"), 50),
        Err(ContractError::TooEarly {
            what: "unbonding",
            at_ns: 10 + 100 * SEC
        })
    );
    assert_eq!(c.do_withdraw(acc("alice"), 10 + 100 * SEC), Ok(50 * NEAR));
    assert!(
        matches!(
            c.do_withdraw(acc("alice"), 10 + 100 * SEC),
            Err(ContractError::Invalid(_))
        ),
        "withdrawn once only"
    );
    c.do_update_addresses(acc("bob"), vec!["b:1".into(), "b:2".into()])
        .unwrap();
    assert_eq!(c.get_node(acc("bob")).unwrap().addresses.len(), 2);
    // Addresses cost the contract storage: the list and each address are bounded.
    let many: Vec<String> = (0..=crate::MAX_ADDRESSES)
        .map(|i| format!("b:{i}"))
        .collect();
    assert_eq!(
        c.do_update_addresses(acc("bob"), many),
        Err(ContractError::BadAddresses)
    );
    let long = vec!["x".repeat(crate::MAX_ADDRESS_LEN + 1)];
    assert_eq!(
        c.do_update_addresses(acc("bob"), long.clone()),
        Err(ContractError::BadAddresses)
    );
    assert_eq!(
        c.do_register(acc("zed"), 10 * NEAR, hex(NodeId([9; 32])), long),
        Err(ContractError::BadAddresses)
    );
    assert_eq!(c.get_node(acc("bob")).unwrap().addresses.len(), 2);
}

#[test]
fn open_with_confirmation_and_cancel() {
    let mut c = setup(&["alice", "bob", "carol"]);
    assert!(matches!(
        c.do_propose(acc("alice"), NEAR / 2, acc("bob"), terms()),
        Err(ContractError::InsufficientDeposit { .. })
    ));
    assert!(matches!(
        c.do_propose(acc("alice"), NEAR, acc("alice"), terms()),
        Err(ContractError::Invalid(_))
    ));
    assert!(matches!(
        c.do_propose(acc("alice"), NEAR, acc("zed"), terms()),
        Err(ContractError::UnknownNode(_))
    ));
    let id = c
        .do_propose(acc("alice"), 2 * NEAR, acc("bob"), terms())
        .unwrap();
    assert!(
        matches!(
            c.do_propose(acc("bob"), NEAR, acc("alice"), terms()),
            Err(ContractError::Invalid(_))
        ),
        "one channel per pair"
    );
    assert_eq!(
        c.do_confirm(acc("carol"), NEAR, id),
        Err(ContractError::Unauthorized(
            "only the proposed peer confirms"
        ))
    );
    assert!(matches!(
        c.do_confirm(acc("bob"), 1, id),
        Err(ContractError::InsufficientDeposit { .. })
    ));
    assert!(c.get_edges(0, 10).is_empty(), "not an edge until confirmed");
    c.do_confirm(acc("bob"), 3 * NEAR, id).unwrap();
    let ch = c.get_channel(U64(id)).unwrap();
    assert_eq!(
        (ch.state.clone(), ch.deposit_a.0, ch.deposit_b.0),
        (ChannelState::Open, 2 * NEAR, 3 * NEAR)
    );
    assert_eq!(c.get_edges(0, 10).len(), 1);
    assert!(matches!(
        c.do_confirm(acc("bob"), NEAR, id),
        Err(ContractError::WrongState { .. })
    ));
    assert!(matches!(
        c.do_cancel(acc("alice"), id),
        Err(ContractError::WrongState { .. })
    ));
    // Cancel a proposal: the proposer is refunded, the pair is free again.
    let id2 = c
        .do_propose(acc("alice"), 4 * NEAR, acc("carol"), terms())
        .unwrap();
    assert_eq!(
        c.do_cancel(acc("bob"), id2),
        Err(ContractError::Unauthorized("only an endpoint cancels"))
    );
    assert_eq!(c.do_cancel(acc("carol"), id2), Ok((acc("alice"), 4 * NEAR)));
    assert_eq!(
        c.get_channel(U64(id2)).unwrap().state,
        ChannelState::Cancelled
    );
    assert!(
        c.do_propose(acc("alice"), NEAR, acc("carol"), terms())
            .unwrap()
            > id2,
        "ids are never reused"
    );
    let ev = events();
    for e in ["channel_proposed", "channel_opened", "channel_cancelled"] {
        assert!(ev.contains(&e.to_string()), "{e} not emitted: {ev:?}");
    }
}

#[test]
fn cooperative_close_pays_out_at_once() {
    let mut c = setup(&["alice", "bob"]);
    let id = open(&mut c, "alice", "bob");
    // Alice paid Bob 3 NEAR in total, Bob paid Alice 1 NEAR.
    let states = vec![
        update("alice", "bob", id, 7, 3 * NEAR),
        update("bob", "alice", id, 2, NEAR),
    ];
    c.do_propose_close(acc("alice"), id, states, 0).unwrap();
    assert!(
        c.get_edges(0, 10).is_empty(),
        "a closing channel no longer routes"
    );
    assert_eq!(
        c.do_confirm_close(acc("alice"), id, vec![]),
        Err(ContractError::Unauthorized("the other endpoint confirms"))
    );
    let (a, pa, b, pb) = c.do_confirm_close(acc("bob"), id, vec![]).unwrap();
    assert_eq!(
        (a, pa, b, pb),
        (acc("alice"), 3 * NEAR, acc("bob"), 7 * NEAR)
    );
    assert!(
        matches!(
            c.do_confirm_close(acc("bob"), id, vec![]),
            Err(ContractError::WrongState { .. })
        ),
        "double close"
    );
    assert!(matches!(
        c.do_start_close(acc("bob"), id, vec![], 0),
        Err(ContractError::WrongState { .. })
    ));
}

#[test]
fn adversarial_close_newer_state_wins() {
    let mut c = setup(&["alice", "bob"]);
    let id = open(&mut c, "alice", "bob");
    // Alice submits an old state of Bob's payments to her (seq 3) and none of hers.
    let until = c
        .do_start_close(
            acc("alice"),
            id,
            vec![update("bob", "alice", id, 3, 2 * NEAR)],
            1_000,
        )
        .unwrap();
    assert_eq!(until, 1_000 + 60 * SEC);
    // Bob shows Alice's latest payment to him.
    c.do_challenge(
        acc("bob"),
        id,
        vec![update("alice", "bob", id, 9, 4 * NEAR)],
        2_000,
    )
    .unwrap();
    // A stale state always loses: an earlier one that pays Bob less.
    assert_eq!(
        c.do_challenge(
            acc("bob"),
            id,
            vec![update("alice", "bob", id, 8, 3 * NEAR)],
            3_000
        ),
        Err(ContractError::StaleState {
            direction: "a->b",
            have: 4 * NEAR,
            got: 3 * NEAR
        })
    );
    // Signed by Alice, but for another deployment of the contract (same channel id,
    // same keys): refused.
    for other in [
        Deployment::of("mainnet", near_sdk::env::current_account_id().as_str()),
        Deployment::of("test", "por-old.test"),
    ] {
        let mut replayed: SignedUpdate =
            wire::decode(&update("alice", "bob", id, 10, 5 * NEAR).0).unwrap();
        replayed.sig = key("alice")
            .sign(&other, &replayed.batch().unwrap())
            .unwrap();
        let replayed = Base64VecU8(wire::encode(&replayed).unwrap());
        assert_eq!(
            c.do_challenge(acc("bob"), id, vec![replayed], 3_000),
            Err(ContractError::BadSignature("channel update"))
        );
    }
    // Forged: Bob signs "Alice paid Bob" himself.
    let mut forged: SignedUpdate =
        wire::decode(&update("alice", "bob", id, 10, 5 * NEAR).0).unwrap();
    forged.sig = key("bob").sign(&dep(), &forged.batch().unwrap()).unwrap();
    let forged = Base64VecU8(wire::encode(&forged).unwrap());
    assert_eq!(
        c.do_challenge(acc("bob"), id, vec![forged], 3_000),
        Err(ContractError::BadSignature("channel update"))
    );
    // Alice's update signed as the middle one of a batch of three: its proof is
    // checked against the root she signed; a proof that does not fit is refused.
    let in_batch = batch_member(id);
    let mut misfit = in_batch.clone();
    misfit.proof.index = 0;
    assert_eq!(
        c.do_challenge(
            acc("bob"),
            id,
            vec![Base64VecU8(wire::encode(&misfit).unwrap())],
            3_000
        ),
        Err(ContractError::BadSignature("channel update"))
    );
    let mut truncated = in_batch;
    truncated.proof.siblings.pop();
    assert!(matches!(
        c.do_challenge(
            acc("bob"),
            id,
            vec![Base64VecU8(wire::encode(&truncated).unwrap())],
            3_000
        ),
        Err(ContractError::Malformed { .. })
    ));
    assert_eq!(
        c.do_challenge(
            acc("bob"),
            id,
            vec![update("alice", "bob", 999, 10, 5 * NEAR)],
            3_000
        ),
        Err(ContractError::ForeignState(id))
    );
    assert_eq!(
        c.do_challenge(
            acc("bob"),
            id,
            vec![update("alice", "carol", id, 10, 5 * NEAR)],
            3_000
        ),
        Err(ContractError::ForeignState(id))
    );
    assert!(matches!(
        c.do_challenge(acc("bob"), id, vec![Base64VecU8(vec![1, 2, 3])], 3_000),
        Err(ContractError::Malformed { .. })
    ));
    assert!(matches!(
        c.do_challenge(acc("carol"), id, vec![], 3_000),
        Err(ContractError::Unauthorized(_))
    ));
    assert_eq!(
        c.do_finalize_close(id, until - 1),
        Err(ContractError::TooEarly {
            what: "challenge period",
            at_ns: until
        })
    );
    assert!(matches!(
        c.do_challenge(
            acc("alice"),
            id,
            vec![update("bob", "alice", id, 4, 3 * NEAR)],
            until
        ),
        Err(ContractError::WrongState { .. })
    ));
    let (_, pa, _, pb) = c.do_finalize_close(id, until).unwrap();
    // Alice: 5 + 2 - 4 = 3; Bob: 5 + 4 - 2 = 7.
    assert_eq!((pa, pb), (3 * NEAR, 7 * NEAR));
    assert!(
        matches!(
            c.do_finalize_close(id, until),
            Err(ContractError::WrongState { .. })
        ),
        "double finalize"
    );
}

#[test]
fn a_payer_cannot_revoke_its_payments() {
    let mut c = setup(&["alice", "bob"]);
    let id = open(&mut c, "alice", "bob");
    // Alice paid Bob 4 NEAR (seq 9). She starts a close with a state she signed after
    // the fact: the highest seq there is, paying Bob nothing.
    let revoke = update("alice", "bob", id, u64::MAX, 0);
    let until = c
        .do_start_close(acc("alice"), id, vec![revoke.clone()], 1_000)
        .unwrap();
    // Bob's real state pays him more, so it wins although its seq is lower.
    c.do_challenge(
        acc("bob"),
        id,
        vec![update("alice", "bob", id, 9, 4 * NEAR)],
        2_000,
    )
    .unwrap();
    // Submitting the revocation again changes nothing: it pays Bob less.
    assert_eq!(
        c.do_challenge(acc("alice"), id, vec![revoke], 3_000),
        Err(ContractError::StaleState {
            direction: "a->b",
            have: 4 * NEAR,
            got: 0
        })
    );
    let (_, pa, _, pb) = c.do_finalize_close(id, until).unwrap();
    assert_eq!(
        (pa, pb),
        (NEAR, 9 * NEAR),
        "Bob keeps the 4 NEAR he was paid"
    );

    // The same on a second channel, the revocation submitted after the real state.
    let id = open(&mut c, "alice", "bob");
    let until = c
        .do_start_close(
            acc("bob"),
            id,
            vec![update("alice", "bob", id, 3, 2 * NEAR)],
            10_000,
        )
        .unwrap();
    assert!(matches!(
        c.do_challenge(
            acc("alice"),
            id,
            vec![update("alice", "bob", id, u64::MAX, 0)],
            11_000
        ),
        Err(ContractError::StaleState { .. })
    ));
    let (_, pa, _, pb) = c.do_finalize_close(id, until).unwrap();
    assert_eq!((pa, pb), (3 * NEAR, 7 * NEAR));
}

/// Alice's update paying Bob 5 NEAR on `channel`, signed as the middle one of a batch
/// of three leaves.
fn batch_member(channel: u64) -> SignedUpdate {
    let mut su: SignedUpdate =
        wire::decode(&update("alice", "bob", channel, 10, 5 * NEAR).0).unwrap();
    let leaves = [
        Hash::of(b"another update"),
        su.update.leaf().unwrap(),
        Hash::of(b"a response"),
    ];
    let (root, proofs) = por_protocol::merkle::build(&leaves).unwrap();
    su.sig = key("alice")
        .sign(&dep(), &por_protocol::types::BatchRoot { root, leaves: 3 })
        .unwrap();
    su.proof = proofs[1].clone();
    su
}

#[test]
fn an_update_signed_in_a_batch_settles_the_channel() {
    let mut c = setup(&["alice", "bob"]);
    let id = open(&mut c, "alice", "bob");
    let until = c
        .do_start_close(
            acc("bob"),
            id,
            vec![Base64VecU8(wire::encode(&batch_member(id)).unwrap())],
            0,
        )
        .unwrap();
    let (_, pa, _, pb) = c.do_finalize_close(id, until).unwrap();
    assert_eq!((pa, pb), (0, 10 * NEAR), "Alice's 5 NEAR went to Bob");
}

#[test]
fn payout_is_clamped_to_the_channel() {
    let mut c = setup(&["alice", "bob"]);
    let id = open(&mut c, "alice", "bob");
    // Alice signed away more than she had (cannot happen with honest nodes).
    let until = c
        .do_start_close(
            acc("bob"),
            id,
            vec![update("alice", "bob", id, 1, 50 * NEAR)],
            0,
        )
        .unwrap();
    let (_, pa, _, pb) = c.do_finalize_close(id, until).unwrap();
    assert_eq!((pa, pb), (0, 10 * NEAR));
}

#[test]
fn sever_charges_both_and_is_submittable_by_anyone() {
    let mut c = setup(&["alice", "bob", "carol"]);
    let ab = open(&mut c, "alice", "bob");
    let bc = open(&mut c, "bob", "carol");
    let ca = open(&mut c, "carol", "alice");
    // A notice not signed by its severer.
    let mut bad: SignedSeverNotice = wire::decode(&notice("bob", "carol", bc).0).unwrap();
    bad.sig = key("alice").sign(&dep(), &bad.notice).unwrap();
    assert_eq!(
        c.do_sever(Base64VecU8(wire::encode(&bad).unwrap()), 0),
        Err(ContractError::BadSignature("sever notice"))
    );
    // Signed by a node that is not an endpoint of the edge.
    assert_eq!(
        c.do_sever(notice("alice", "carol", bc), 0),
        Err(ContractError::ForeignState(bc))
    );
    // An unregistered key.
    assert!(matches!(
        c.do_sever(notice("zed", "carol", bc), 0),
        Err(ContractError::UnknownNode(_))
    ));
    assert_eq!(
        c.do_sever(notice("bob", "carol", 77), 0),
        Err(ContractError::UnknownChannel(77))
    );
    // Bob's notice, submitted by Alice's transaction (the contract does not care who).
    let split = c.do_sever(notice("bob", "carol", bc), 5 * SEC).unwrap();
    assert_eq!(
        split,
        Split::Connected,
        "carol still reaches bob through alice"
    );
    assert_eq!(
        (stake(&c, "bob"), stake(&c, "carol")),
        (100 * NEAR - NEAR / 10, 100 * NEAR - NEAR / 10)
    );
    assert_eq!(c.get_pool().0, 2 * (NEAR / 10));
    let ch = c.get_channel(U64(bc)).unwrap();
    let rec = ch.severed.clone().unwrap();
    assert_eq!(
        (rec.by, rec.at_ns.0, rec.reason.as_str()),
        (acc("bob"), 5 * SEC, "Unresponsive")
    );
    assert_eq!(
        ch.state,
        ChannelState::Closing {
            until_ns: U64(65 * SEC)
        }
    );
    assert!(
        matches!(
            c.do_sever(notice("bob", "carol", bc), 6 * SEC),
            Err(ContractError::WrongState { .. })
        ),
        "twice"
    );
    // Its states still settle after the challenge period.
    c.do_challenge(
        acc("carol"),
        bc,
        vec![update("bob", "carol", bc, 1, NEAR)],
        6 * SEC,
    )
    .unwrap();
    let (_, pb, _, pc) = c.do_finalize_close(bc, 65 * SEC).unwrap();
    assert_eq!((pb, pc), (4 * NEAR, 6 * NEAR));
    let ev = events();
    assert!(
        ev.contains(&"edge_severed".to_string()) && ev.contains(&"partition_checked".to_string()),
        "{ev:?}"
    );
    let _ = (ab, ca);
}

#[test]
fn partition_slashes_the_lighter_side_and_the_isolated_node_reimburses() {
    // alice - bob - carol, carol with little stake.
    let mut c = setup(&["alice", "bob"]);
    c.do_register(acc("carol"), 20 * NEAR, hex(key("carol").id()), vec![])
        .unwrap();
    open(&mut c, "alice", "bob");
    let bc = open(&mut c, "bob", "carol");
    let split = c.do_sever(notice("bob", "carol", bc), 0).unwrap();
    let Split::Partitioned { a, b } = split else {
        panic!("should split")
    };
    assert_eq!((a.0.len(), b.0.len()), (2, 1));
    // Carol (20 NEAR, alone) is disconnected: she pays her 0.1 penalty, 10% of the rest,
    // and reimburses Bob's 0.1 penalty.
    let after_penalty = 20 * NEAR - NEAR / 10;
    let slashed = after_penalty / 10;
    assert_eq!(stake(&c, "carol"), after_penalty - slashed - NEAR / 10);
    assert_eq!(stake(&c, "bob"), 100 * NEAR, "bob made whole");
    assert!(c.get_node(acc("carol")).unwrap().disconnected);
    assert!(!c.get_node(acc("bob")).unwrap().disconnected);
    assert_eq!(c.get_pool().0, 2 * (NEAR / 10) + slashed);
    let ev = events();
    for e in ["node_disconnected", "penalties_reimbursed"] {
        assert!(ev.contains(&e.to_string()), "{e}: {ev:?}");
    }
}

/// `a` - `b` - `c` - `d` with the given stakes (NEAR).
fn line(stakes: [u128; 4]) -> (PorContract, [u64; 3]) {
    at(0);
    let mut c = PorContract::new(config());
    let names = ["a", "b", "c", "d"];
    for (n, s) in names.iter().zip(stakes) {
        c.do_register(acc(n), s * NEAR, hex(key(n).id()), vec![])
            .unwrap();
    }
    let ids = [
        open(&mut c, "a", "b"),
        open(&mut c, "b", "c"),
        open(&mut c, "c", "d"),
    ];
    (c, ids)
}

#[test]
fn the_smaller_side_reimburses_the_penalties_the_larger_side_paid_across_the_split() {
    // a - b - c - d, then a - c too: severing b-c (by b) splits nothing (b reaches c
    // through a). Then severing a-b (by a) leaves b alone: b, the lighter side, pays
    // back both penalties its peers on the larger side paid: a's for a-b, and c's for
    // the earlier b-c.
    let (mut c, [ab, bc, _]) = line([100, 30, 100, 100]);
    open(&mut c, "a", "c");
    let pen = NEAR / 10;
    assert_eq!(
        c.do_sever(notice("b", "c", bc), 0).unwrap(),
        Split::Connected
    );
    assert_eq!(stake(&c, "c"), 100 * NEAR - pen);
    assert_eq!(c.get_node(acc("b")).unwrap().owed, U128(pen));
    let Split::Partitioned { .. } = c.do_sever(notice("a", "b", ab), 1).unwrap() else {
        panic!("b is cut off")
    };
    // a and c are made whole; b paid two penalties, was slashed 10% and paid two back.
    assert_eq!(stake(&c, "a"), 100 * NEAR);
    assert_eq!(stake(&c, "c"), 100 * NEAR);
    let after_penalties = 30 * NEAR - 2 * pen;
    let slashed = after_penalties / 10;
    assert_eq!(stake(&c, "b"), after_penalties - slashed - 2 * pen);
    assert_eq!(c.get_node(acc("b")).unwrap().owed, U128(0));
    assert!(c.get_node(acc("b")).unwrap().disconnected);
    // Penalties owed within one side stay owed: a owes b nothing more, c owes b its
    // share of b-c only if a later split parts them with c on the smaller side.
    assert_eq!(c.get_node(acc("c")).unwrap().owed, U128(pen));
}

#[test]
fn closing_the_edge_that_splits_the_graph_runs_the_partition_check() {
    // d (light) closes its only edge instead of being severed: it is slashed all the
    // same, and reimburses c's penalty from their earlier severed edge... here c - d
    // was never severed, so only the slash applies.
    let (mut c, [_, _, cd]) = line([100, 100, 100, 20]);
    c.do_start_close(acc("d"), cd, vec![], 0).unwrap();
    assert!(c.get_node(acc("d")).unwrap().disconnected);
    assert_eq!(stake(&c, "d"), 20 * NEAR - 2 * NEAR);
    assert!(events().contains(&"partition_checked".to_string()));
    // A cooperative close that splits runs it too.
    let (mut c, [ab, _, _]) = line([20, 100, 100, 100]);
    c.do_propose_close(acc("a"), ab, vec![], 0).unwrap();
    assert!(c.get_node(acc("a")).unwrap().disconnected);
    assert_eq!(stake(&c, "a"), 18 * NEAR);
}

#[test]
fn unbonding_stake_stays_slashable_and_min_stake_holds_while_a_proposal_is_pending() {
    let (mut c, [_, _, cd]) = line([100, 100, 100, 50]);
    // d unstakes down to the minimum (10 NEAR) while its edge is open.
    c.do_unstake(acc("d"), 40 * NEAR, 0).unwrap();
    assert_eq!(stake(&c, "d"), 10 * NEAR);
    // Then c severs it: the penalty and the slash reach the unbonding 40 NEAR.
    c.do_sever(notice("c", "d", cd), 1).unwrap();
    let view = c.get_node(acc("d")).unwrap();
    assert!(view.disconnected);
    let pen = NEAR / 10;
    let slash = (50 * NEAR - pen) / 10;
    let left = 50 * NEAR - pen - slash - pen;
    let unbonding = view.unbonding.unwrap().0 .0;
    assert_eq!(view.stake.0 + unbonding, left);
    // What is withdrawn is what is left of the unbonding stake, not what was asked.
    at(1_000 * SEC);
    assert_eq!(c.do_withdraw(acc("d"), 1_000 * SEC).unwrap(), unbonding);
    // A pending proposal holds the minimum too.
    at(0);
    let mut c = setup(&["x", "y"]);
    c.do_propose(acc("x"), 5 * NEAR, acc("y"), terms()).unwrap();
    assert!(matches!(
        c.do_unstake(acc("y"), 95 * NEAR, 0),
        Err(ContractError::InsufficientStake(_))
    ));
    assert!(matches!(
        c.do_unstake(acc("x"), 95 * NEAR, 0),
        Err(ContractError::InsufficientStake(_))
    ));
    c.do_unstake(acc("x"), 90 * NEAR, 0).unwrap();
}

#[test]
fn stake_added_just_before_a_split_does_not_decide_the_lighter_side() {
    // a - b - c - d, all 100 NEAR, and c adds 200 NEAR just before b severs b-c.
    // Weighed with it, {c, d} would be heavier and {a, b} slashed; it does not count
    // for an unbonding period, so the sides tie at 200 each and the tie rule (the
    // smaller component, then b's side: {c, d}) decides, as it would have without it.
    let (mut c, [_, bc, _]) = line([100, 100, 100, 100]);
    c.do_add_stake(acc("c"), 200 * NEAR, 10 * SEC).unwrap();
    c.do_sever(notice("b", "c", bc), 11 * SEC).unwrap();
    assert!(c.get_node(acc("c")).unwrap().disconnected);
    assert!(!c.get_node(acc("b")).unwrap().disconnected);
    // Once the period has passed, added stake weighs like any other.
    let (mut c, [_, bc, _]) = line([100, 100, 100, 100]);
    c.do_add_stake(acc("c"), 200 * NEAR, 10 * SEC).unwrap();
    c.do_sever(notice("b", "c", bc), 200 * SEC).unwrap();
    assert!(!c.get_node(acc("c")).unwrap().disconnected);
    assert!(c.get_node(acc("b")).unwrap().disconnected);
}

#[test]
fn settled_channels_leave_the_paged_views() {
    let mut c = setup(&["alice", "bob", "carol"]);
    // History: many proposals cancelled, one channel closed.
    for _ in 0..20 {
        let id = c
            .do_propose(acc("alice"), 5 * NEAR, acc("bob"), terms())
            .unwrap();
        c.do_cancel(acc("bob"), id).unwrap();
    }
    let closed = open(&mut c, "alice", "carol");
    c.do_propose_close(acc("alice"), closed, vec![], 0).unwrap();
    c.do_confirm_close(acc("carol"), closed, vec![]).unwrap();
    let live = open(&mut c, "bob", "carol");
    let edges: Vec<u64> = c.get_edges(0, 10).iter().map(|e| e.id.0).collect();
    assert_eq!(edges, vec![live]);
    assert_eq!(c.get_channels(0, 100).len(), 1);
    // Settled ones are still there by id.
    assert_eq!(
        c.get_channel(U64(closed)).unwrap().state,
        ChannelState::Closed
    );
    assert_eq!(
        c.get_channel(U64(1)).unwrap().state,
        ChannelState::Cancelled
    );
}

#[test]
fn a_disconnected_node_that_reconnects_counts_again() {
    // alice - bob - carol; severing bob-carol disconnects carol (the lighter side).
    let mut c = setup(&["alice", "bob"]);
    c.do_register(acc("carol"), 20 * NEAR, hex(key("carol").id()), vec![])
        .unwrap();
    open(&mut c, "alice", "bob");
    let bc = open(&mut c, "bob", "carol");
    c.do_sever(notice("bob", "carol", bc), 0).unwrap();
    assert!(c.get_node(acc("carol")).unwrap().disconnected);
    // Carol opens a new channel with Alice: she is connected again, and says so.
    let ca = open(&mut c, "carol", "alice");
    assert!(!c.get_node(acc("carol")).unwrap().disconnected);
    assert!(events().contains(&"node_reconnected".to_string()));
    // Her stake counts again. Bob adds 10 NEAR: alone he outweighs Alice, but not
    // Alice and Carol together, so severing alice-bob disconnects Bob.
    c.do_add_stake(acc("bob"), 10 * NEAR, 0).unwrap();
    let ab = c
        .get_edges(0, 10)
        .into_iter()
        .find(|e| e.id.0 != ca)
        .unwrap()
        .id
        .0;
    let Split::Partitioned { a, b } = c.do_sever(notice("alice", "bob", ab), 1).unwrap() else {
        panic!("should split")
    };
    let bob = c.get_node(acc("bob")).unwrap();
    assert!(bob.disconnected, "alice + carol outweigh bob: {a:?} {b:?}");
    assert!(!c.get_node(acc("carol")).unwrap().disconnected);
}

#[test]
fn center_matches_the_protocol_crate() {
    // The paper's topology with equal stakes: Bob.
    let names = ["alex", "alice", "bob", "carol", "dave", "eve"];
    let mut c = setup(&names);
    for (x, y) in [
        ("alex", "alice"),
        ("alice", "bob"),
        ("bob", "carol"),
        ("bob", "eve"),
        ("eve", "dave"),
    ] {
        open(&mut c, x, y);
    }
    assert_eq!(c.get_center(), Some(acc("bob")));
    let mut t = por_protocol::topology::Topology::new();
    for e in c.get_edges(0, 100) {
        let k = |a: &AccountId| NodeId(hex32(&c.get_node(a.clone()).unwrap().key).unwrap());
        t.insert_edge(por_protocol::types::EdgeInfo {
            id: ChannelId(e.id.0),
            a: k(&e.a),
            b: k(&e.b),
            terms: (&e.terms).into(),
            deposit_a: Amount(e.deposit_a.0),
            deposit_b: Amount(e.deposit_b.0),
        });
    }
    for n in c.get_nodes(0, 100) {
        t.set_stake(NodeId(hex32(&n.key).unwrap()), Amount(n.stake.0));
    }
    assert_eq!(
        t.stake_weighted_center().map(hex),
        Some(c.get_node(acc("bob")).unwrap().key)
    );
    assert_eq!(c.get_channels(0, 2).len(), 2, "paged");
    assert_eq!(c.get_edges(3, 10).len(), 2);
}

#[test]
fn bindings_take_deposits_from_the_environment() {
    at(0);
    let mut c = PorContract::new(config());
    let as_alice = |yocto: u128| {
        testing_env!(VMContextBuilder::new()
            .predecessor_account_id(acc("alice"))
            .attached_deposit(NearToken::from_yoctonear(yocto))
            .build());
    };
    as_alice(NEAR / 10);
    let deposited = c.storage_deposit(None, None).total.0;
    as_alice(12 * NEAR);
    c.register(hex(key("alice").id()), vec![]);
    // The stake is exactly what was attached; the storage came out of the balance.
    assert_eq!(stake(&c, "alice"), 12 * NEAR);
    let left = c.storage_balance_of(acc("alice")).unwrap().total.0;
    assert!(left < deposited && left > 0, "{left} of {deposited}");
    // Bob, with no storage balance, is refused (on chain the call reverts whole).
    let refused = c.charged(&acc("bob"), |c| {
        c.do_register(acc("bob"), 12 * NEAR, hex(key("bob").id()), vec![])
    });
    assert!(
        matches!(&refused, Err(ContractError::StorageDeposit { have: 0, .. })),
        "{refused:?}"
    );
    assert_eq!(c.get_config(), config());
}

#[test]
#[should_panic(
    expected = "insufficient deposit: attached 1, need at least 10000000000000000000000000"
)]
fn bindings_panic_with_the_error_message() {
    at(0);
    let mut c = PorContract::new(config());
    testing_env!(VMContextBuilder::new()
        .predecessor_account_id(acc("alice"))
        .attached_deposit(NearToken::from_yoctonear(1))
        .build());
    c.register(hex(key("alice").id()), vec![]);
}

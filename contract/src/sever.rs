//! Severing: a signed notice removes an edge with a penalty, then the partition
//! check slashes the lighter side of a split and reimburses penalties from the pool.

use near_sdk::json_types::{Base64VecU8, U128, U64};
use near_sdk::serde_json::json;
use near_sdk::{env, near, AccountId};
use por_protocol::types::SignedSeverNotice;
use por_protocol::wire;

use crate::common::{emit, to_hex, verify, MAX_LISTED};
use crate::error::{add, ok, sub, ContractError, R};
use crate::graph::Split;
use crate::state::{Channel, ChannelState, PorContract, PorContractExt, SeverRecord};

impl PorContract {
    /// Accepts a severing notice signed by an endpoint, submitted by anyone. Both
    /// endpoints pay the penalty; the channel enters its challenge period so its
    /// states can still be settled; then the partition check runs.
    pub fn do_sever(&mut self, notice: Base64VecU8, now: u64) -> R<Split> {
        let sn: SignedSeverNotice =
            wire::decode(&notice.0).map_err(|e| ContractError::Malformed {
                what: "sever notice",
                detail: e.to_string(),
            })?;
        let n = &sn.notice;
        let id = n.channel.0;
        let ch = self.channel(id)?.clone();
        if !matches!(
            ch.state,
            ChannelState::Open | ChannelState::ClosePending { .. }
        ) {
            return Err(ContractError::WrongState {
                id,
                state: ch.state.name(),
                action: "sever",
            });
        }
        let by = self
            .keys
            .get(&to_hex(&n.severer.0))
            .cloned()
            .ok_or_else(|| ContractError::UnknownNode(format!("key {}", to_hex(&n.severer.0))))?;
        let peer_key = to_hex(&n.peer.0);
        let other = if by == ch.a { &ch.b } else { &ch.a };
        if (by != ch.a && by != ch.b) || self.node(other)?.key != peer_key {
            return Err(ContractError::ForeignState(id));
        }
        verify(n, &sn.sig, &n.severer.0, "sever notice")?;
        if ch.state == ChannelState::Open {
            self.unlink(&ch)?;
        }
        let penalty = self.config.sever_penalty.0;
        let mut paid = [0u128; 2];
        for (slot, account) in paid.iter_mut().zip([&ch.a, &ch.b]) {
            let stake = self.stake_of(account)?;
            *slot = penalty.min(stake);
            self.set_stake(account, sub(stake, *slot)?)?;
            self.pool = add(self.pool, *slot)?;
            if let Some(node) = self.nodes.get_mut(account) {
                node.severed.push(id);
            }
        }
        let until = now.saturating_add(self.config.challenge_ns.0);
        let record = SeverRecord {
            by: by.clone(),
            at_ns: U64(now),
            reason: format!("{:?}", n.reason),
            penalty_a: U128(paid[0]),
            penalty_b: U128(paid[1]),
            reimbursed: false,
        };
        if let Some(c) = self.channels.get_mut(&id) {
            c.state = ChannelState::Closing {
                until_ns: U64(until),
            };
            c.severed = Some(record.clone());
        }
        emit(
            "edge_severed",
            json!({"id": U64(id), "by": by, "record": record, "until_ns": U64(until),
                   "notice": notice}),
        );
        self.partition_check(&ch)
    }

    /// After a sever: did the graph split? If so the component with less stake is
    /// disconnected and slashed; a node left isolated reimburses the penalties others
    /// paid on its severed edges.
    pub(crate) fn partition_check(&mut self, ch: &Channel) -> R<Split> {
        let (ia, ib) = (self.node(&ch.a)?.index, self.node(&ch.b)?.index);
        let split = self.graph_mut().split(ia, ib);
        if let Split::Partitioned { a, b } = &split {
            // Less stake loses; equal stake: the smaller component, then b's side.
            let small = if (a.1, a.0.len()) < (b.1, b.0.len()) {
                &a.0
            } else {
                &b.0
            };
            let bps = u128::from(self.config.partition_slash_bps);
            // All in the graph value: one read, one write, however many nodes.
            let mut listed = Vec::new();
            let mut total = 0u128;
            let g = self.graph_mut();
            for &i in small {
                let Some(n) = g.node_mut(i) else { continue };
                let slash = n.stake.saturating_mul(bps) / 10_000;
                n.stake = n.stake.saturating_sub(slash);
                n.disconnected = true;
                total = total.saturating_add(slash);
                if listed.len() < MAX_LISTED {
                    listed.push(n.account.clone());
                }
            }
            self.pool = add(self.pool, total)?;
            // NEAR allows 16 KiB of logs per call: the event names at most MAX_LISTED
            // accounts; every node's `disconnected` flag is in the paged views.
            emit(
                "node_disconnected",
                json!({"channel": ch.id, "count": small.len(), "slashed_total": U128(total),
                       "bps": self.config.partition_slash_bps, "accounts": listed,
                       "truncated": small.len() > MAX_LISTED}),
            );
        }
        for account in [&ch.a, &ch.b] {
            let index = self.node(account)?.index;
            if self.graph.get().as_ref().map_or(0, |g| g.degree(index)) == 0 {
                self.reimburse(account)?;
            }
        }
        emit(
            "partition_checked",
            json!({"channel": ch.id, "split": matches!(split, Split::Partitioned { .. })}),
        );
        Ok(split)
    }

    /// An isolated node pays back the penalties its former peers paid for severing
    /// their edges with it.
    pub(crate) fn reimburse(&mut self, isolated: &AccountId) -> R<()> {
        let severed = self.node(isolated)?.severed.clone();
        for id in severed {
            let ch = self.channel(id)?.clone();
            let Some(rec) = ch.severed.clone() else {
                continue;
            };
            if rec.reimbursed {
                continue;
            }
            let (peer, owed) = if *isolated == ch.a {
                (ch.b.clone(), rec.penalty_b.0)
            } else {
                (ch.a.clone(), rec.penalty_a.0)
            };
            let stake = self.stake_of(isolated)?;
            let pay = owed.min(stake);
            self.set_stake(isolated, sub(stake, pay)?)?;
            let peer_stake = self.stake_of(&peer)?;
            self.set_stake(&peer, add(peer_stake, pay)?)?;
            if let Some(c) = self.channels.get_mut(&id) {
                if let Some(r) = c.severed.as_mut() {
                    r.reimbursed = true;
                }
            }
            emit(
                "penalty_reimbursed",
                json!({"channel": U64(id), "from": isolated, "to": peer, "amount": U128(pay)}),
            );
        }
        Ok(())
    }
}

#[near]
impl PorContract {
    /// Severs an edge with a notice signed by one of its endpoints (anyone may submit).
    /// Returns whether the graph split.
    pub fn sever(&mut self, notice: Base64VecU8) -> bool {
        matches!(
            ok(self.do_sever(notice, env::block_timestamp())),
            Split::Partitioned { .. }
        )
    }
}

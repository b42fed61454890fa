//! Severing: a signed notice removes an edge with a penalty to each endpoint; then the
//! partition check, which closes that remove an edge run too: if the graph split, the
//! lighter side is slashed and its nodes reimburse the penalties that nodes of the
//! heavier side paid for edges severed between the two sides (paper §2).

use near_sdk::json_types::{Base64VecU8, U128, U64};
use near_sdk::serde_json::json;
use near_sdk::{env, near};
use por_protocol::types::SignedSeverNotice;
use por_protocol::wire;

use crate::common::{emit, to_hex, verify, MAX_LISTED};
use crate::error::{add, ok, ContractError, R};
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
        verify(&self.deployment, n, &sn.sig, &n.severer.0, "sever notice")?;
        if ch.state == ChannelState::Open {
            self.unlink(&ch)?;
        }
        let penalty = self.config.sever_penalty.0;
        let (ia, ib) = (self.node(&ch.a)?.index, self.node(&ch.b)?.index);
        let mut paid = [0u128; 2];
        for (slot, index) in paid.iter_mut().zip([ia, ib]) {
            // Unbonding stake pays too: unstaking first is no way out.
            *slot = self.gnode(index)?.take(penalty);
            self.pool = add(self.pool, *slot)?;
        }
        // Each endpoint owes the other its penalty back if a split ever leaves it on
        // the smaller side and the other on the larger.
        self.gnode(ia)?.owed.push((ib, paid[1], id));
        self.gnode(ib)?.owed.push((ia, paid[0], id));
        let until = now.saturating_add(self.config.challenge_ns.0);
        let record = SeverRecord {
            by: by.clone(),
            at_ns: U64(now),
            reason: format!("{:?}", n.reason),
            penalty_a: U128(paid[0]),
            penalty_b: U128(paid[1]),
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
        self.partition_check(&ch, now)
    }

    /// After an edge left the topology (severed, or closed): did the graph split? If
    /// so the side that weighs less (see `GNode::weight`) is disconnected and slashed
    /// `partition_slash_bps` of its stake, unbonding stake included; and each of its
    /// nodes pays back, from what it has left, every penalty a node of the other side
    /// paid for an edge severed between them (recorded in `GNode::owed` at the sever,
    /// so that finding them costs no storage read beyond the graph's one).
    pub(crate) fn partition_check(&mut self, ch: &Channel, now: u64) -> R<Split> {
        let (ia, ib) = (self.node(&ch.a)?.index, self.node(&ch.b)?.index);
        let split = self.graph_mut().split(ia, ib, now);
        if let Split::Partitioned { a, b } = &split {
            // Less weight loses; equal weight: the smaller component, then b's side.
            let small = if (a.1, a.0.len()) < (b.1, b.0.len()) {
                a.0.clone()
            } else {
                b.0.clone()
            };
            self.slash_side(ch, &small)?;
            self.reimburse_across(&small)?;
        }
        emit(
            "partition_checked",
            json!({"channel": ch.id, "split": matches!(split, Split::Partitioned { .. })}),
        );
        Ok(split)
    }

    /// Slashes and disconnects the smaller side of a split.
    fn slash_side(&mut self, ch: &Channel, small: &[u32]) -> R<()> {
        let bps = u128::from(self.config.partition_slash_bps);
        // All in the graph value: one read, one write, however many nodes.
        let mut listed = Vec::new();
        let mut total = 0u128;
        let g = self.graph_mut();
        for &i in small {
            let Some(n) = g.node_mut(i) else { continue };
            let slash = n.stake.saturating_add(n.unbonding).saturating_mul(bps) / 10_000;
            let taken = n.take(slash);
            n.disconnected = true;
            total = total.saturating_add(taken);
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
        Ok(())
    }

    /// The smaller side's nodes reimburse the larger side's for the penalties those
    /// paid on edges severed between the two sides. Penalties on edges severed within
    /// one side stay owed (a later split may part them). The payment moves stake: the
    /// pool keeps the penalties themselves.
    fn reimburse_across(&mut self, small: &[u32]) -> R<()> {
        let g = self.graph_mut();
        let mut on_small = vec![false; g.nodes.len()];
        for &i in small {
            if let Some(slot) = on_small.get_mut(i as usize) {
                *slot = true;
            }
        }
        let mut listed = Vec::new();
        let (mut count, mut total) = (0usize, 0u128);
        for &i in small {
            let Some(n) = g.node_mut(i) else { continue };
            let (across, within): (Vec<_>, Vec<_>) = std::mem::take(&mut n.owed)
                .into_iter()
                .partition(|(peer, _, _)| !on_small.get(*peer as usize).copied().unwrap_or(true));
            n.owed = within;
            let from = n.account.clone();
            let mut paid = Vec::new();
            for (peer, amount, channel) in across {
                let Some(n) = g.node_mut(i) else { break };
                let pay = n.take(amount);
                if let Some(p) = g.node_mut(peer) {
                    p.stake = p.stake.saturating_add(pay);
                    paid.push((p.account.clone(), pay, channel));
                }
            }
            for (to, pay, channel) in paid {
                count = count.saturating_add(1);
                total = total.saturating_add(pay);
                if listed.len() < MAX_LISTED {
                    listed.push(json!({"channel": U64(channel), "from": from, "to": to,
                                       "amount": U128(pay)}));
                }
            }
        }
        if count > 0 {
            emit(
                "penalties_reimbursed",
                json!({"count": count, "total": U128(total), "payments": listed,
                       "truncated": count > MAX_LISTED}),
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
            ok(self.charged(&env::predecessor_account_id(), |c| c
                .do_sever(notice, env::block_timestamp()))),
            Split::Partitioned { .. }
        )
    }
}

//! What a run reports: the timeline of records, final balances from the states each
//! payee holds, and every broken invariant; as JSON lines or as a table.

use std::collections::{BTreeMap, BTreeSet};

use por_protocol::engine::Event;
use por_protocol::types::ChannelId;
use por_protocol::{Amount, Time};

use serde::Serialize;

use super::{Ev, Sim};

/// One line of output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Record {
    /// Virtual time.
    pub t_ms: u64,
    /// The node reporting.
    pub node: String,
    /// What happened.
    pub kind: &'static str,
    /// The other node involved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The request, as `r<index>` in scenario order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// An amount (yoctoNEAR).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<u128>,
    /// A running total (late fees).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u128>,
    /// A latency or budget in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ms: Option<u64>,
    /// A deadline in virtual ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Free-form detail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Record {
    pub(super) fn new(t: Time, node: &str, kind: &'static str) -> Record {
        Record {
            t_ms: t.ms(),
            node: node.to_string(),
            kind,
            peer: None,
            request: None,
            amount: None,
            total: None,
            ms: None,
            deadline_ms: None,
            detail: None,
        }
    }
}

/// What a run produced.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The timeline.
    pub records: Vec<Record>,
    /// Net balance change per node, from the states each payee holds (what the
    /// contract would pay out).
    pub balances: BTreeMap<String, i128>,
    /// Broken invariants (must be empty).
    pub violations: Vec<String>,
    /// Late-fee rate per request label.
    pub rates: BTreeMap<String, u128>,
    /// Requests the first hop acknowledged, by label.
    pub acked: BTreeSet<String>,
    /// Frames delivered.
    pub frames: u64,
}

impl Report {
    /// The timeline as a table for reading: a header with the scenario's name and
    /// wrapped description, one line per record, then the final balances.
    pub fn to_table(&self, name: &str, description: &str) -> String {
        use std::fmt::Write as _;
        let report = self;
        let mut out = format!("== {name}\n");
        for line in textwrap(description, 88) {
            let _ = writeln!(out, "   {line}");
        }
        for r in &report.records {
            let mut rest = Vec::new();
            if let Some(p) = &r.peer {
                rest.push(format!("peer={p}"));
            }
            if let Some(x) = &r.request {
                rest.push(format!("request={x}"));
            }
            if let Some(a) = r.amount {
                rest.push(format!("amount={a}"));
            }
            if let Some(t) = r.total {
                rest.push(format!("total={t}"));
            }
            if let Some(ms) = r.ms {
                rest.push(format!("ms={ms}"));
            }
            if let Some(d) = r.deadline_ms {
                rest.push(format!("deadline={d}"));
            }
            if let Some(d) = &r.detail {
                rest.push(d.clone());
            }
            let _ = writeln!(
                out,
                "{:>7} ms  {:<6} {:<22} {}",
                r.t_ms,
                r.node,
                r.kind,
                rest.join(" ")
            );
        }
        let balances: Vec<String> = report
            .balances
            .iter()
            .map(|(n, b)| format!("{n} {b:+}"))
            .collect();
        let _ = writeln!(
            out,
            "   final balances (yoctoNEAR): {}\n",
            balances.join(", ")
        );
        out
    }

    /// The records as JSON lines, with the final balances line last.
    pub fn to_json_lines(&self) -> String {
        let mut out = String::new();
        for r in &self.records {
            out.push_str(&serde_json::to_string(r).unwrap_or_default());
            out.push('\n');
        }
        let balances = serde_json::to_string(&self.balances).unwrap_or_default();
        out.push_str(&format!("{{\"kind\":\"final\",\"balances\":{balances}}}"));
        out.push('\n');
        out
    }

    /// Records of one kind.
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Record> + 'a {
        self.records.iter().filter(move |r| r.kind == kind)
    }
}

impl Sim {
    pub(super) fn on_event(&mut self, i: usize, ev: Event, now: Time) {
        let name = self.nodes[i].name.clone();
        let Some(d) = ev.describe() else { return };
        let mut r = Record::new(now, &name, d.kind);
        r.peer = d.peer.map(|p| self.name_of(&p));
        r.request = d.request.map(|q| self.label(&q));
        r.amount = d.amount.map(|a| a.0);
        r.total = d.total.map(|a| a.0);
        r.ms = d.ms;
        r.deadline_ms = d.deadline.map(Time::ms);
        r.detail = d.detail;
        // What the simulator does beyond recording: acks count, the server answers,
        // and no late fee may pay for time before its deadline.
        match ev {
            Event::RequestAcked { request } => {
                self.report.acked.insert(self.label(&request));
            }
            Event::RequestReceived { request, body, .. } if self.nodes[i].respond => {
                let at = now.plus(self.nodes[i].response_delay_ms);
                self.push(
                    at,
                    Ev::Respond {
                        node: i,
                        request,
                        body,
                    },
                );
            }
            Event::LateFeePaid {
                request,
                total,
                owed_since,
                ..
            } => {
                let rate = self
                    .report
                    .rates
                    .get(&self.label(&request))
                    .copied()
                    .unwrap_or(0);
                let allowed = rate.saturating_mul(u128::from(now.since(owed_since)));
                if total.0 > allowed {
                    self.violation(
                        now,
                        format!("{name} paid {} for time before its deadline", total.0),
                    );
                }
            }
            _ => {}
        }
        self.report.records.push(r);
    }

    pub(super) fn finish(mut self) -> Report {
        // Balances from the states each payee holds durably: exactly what the contract
        // would pay out if every channel closed now.
        let mut balances: BTreeMap<String, i128> =
            self.nodes.iter().map(|n| (n.name.clone(), 0i128)).collect();
        let mut violations = Vec::new();
        for (k, e) in self.scenario.edges.iter().enumerate() {
            let ch = ChannelId(k as u64 + 1);
            let (Some(&a), Some(&b)) = (self.by_name.get(&e.a), self.by_name.get(&e.b)) else {
                continue;
            };
            let held = |x: usize| {
                self.nodes[x]
                    .node
                    .store
                    .channels
                    .get(&ch)
                    .map(|c| (c.incoming.cumulative, c.outgoing.cumulative))
                    .unwrap_or_default()
            };
            let ((a_in, a_out), (b_in, b_out)) = (held(a), held(b));
            // The payee never holds more than the payer signed.
            if a_in > b_out || b_in > a_out {
                violations.push(format!("{ch}: payee holds more than payer signed"));
            }
            let capacity = Amount(e.deposit_a.0).checked_add(Amount(e.deposit_b.0));
            let net_a = i128::try_from(a_in.0)
                .unwrap_or(i128::MAX)
                .saturating_sub(i128::try_from(b_in.0).unwrap_or(i128::MAX));
            let payout_a = i128::try_from(e.deposit_a.0)
                .unwrap_or(i128::MAX)
                .saturating_add(net_a);
            let payout_b = i128::try_from(e.deposit_b.0)
                .unwrap_or(i128::MAX)
                .saturating_sub(net_a);
            if payout_a < 0 || payout_b < 0 || capacity.is_err() {
                violations.push(format!(
                    "{ch}: settlement out of range ({payout_a}, {payout_b})"
                ));
            }
            if let Some(v) = balances.get_mut(&e.a) {
                *v = v.saturating_add(net_a);
            }
            if let Some(v) = balances.get_mut(&e.b) {
                *v = v.saturating_sub(net_a);
            }
        }
        // Every node's durable store must match its live channel state.
        for n in &self.nodes {
            if !n.online {
                continue;
            }
            for rec in n.node.engine.channels() {
                match n.node.store.channels.get(&rec.id()) {
                    Some(s) if s.incoming == rec.incoming && s.outgoing.seq == rec.outgoing.seq => {
                    }
                    _ => violations.push(format!(
                        "{}: store diverges from engine on {}",
                        n.name,
                        rec.id()
                    )),
                }
            }
        }
        let total: i128 = balances.values().copied().fold(0i128, i128::saturating_add);
        if total != 0 {
            violations.push(format!("money not conserved: balances sum to {total}"));
        }
        self.report.balances = balances;
        self.report.violations.extend(violations);
        self.report
    }
}

/// Splits `text` into lines of at most `width` characters, at spaces.
fn textwrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

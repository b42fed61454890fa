//! The demo's report as text: both timelines, each outcome, and the balances.

use por_node::demo::{DemoReport, Line};
use por_node::Outcome;

fn outcome_line(o: &Outcome) -> String {
    match o {
        Outcome::Response {
            body,
            latency_ms,
            on_time,
            ..
        } => format!(
            "response {:?} after {latency_ms} ms ({})",
            String::from_utf8_lossy(body),
            if *on_time { "on time" } else { "late" }
        ),
        Outcome::Proof {
            channel,
            latency_ms,
            ..
        } => format!("proof that edge {channel} was severed, after {latency_ms} ms"),
        Outcome::Rejected { reason, .. } => format!("refused: {reason}"),
        Outcome::Late {
            overdue_ms,
            fees_received,
            ..
        } => format!("late by {overdue_ms} ms, {fees_received} in fees so far"),
    }
}

/// The report as text.
pub(crate) fn render(report: &DemoReport, transport: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut part = |title: &str, lines: &[Line], outcome: &Outcome| {
        let _ = writeln!(out, "== {title}");
        for l in lines {
            let _ = writeln!(out, "{:>7} ms  {:<6} {}", l.t_ms, l.node, l.what);
        }
        let _ = writeln!(out, "   outcome at Alex: {}\n", outcome_line(outcome));
    };
    part(
        &format!("paper 5.1 over {transport}: Alex -> Alice -> Bob -> Carol (promised round trip 800 ms)"),
        &report.happy_timeline,
        &report.happy,
    );
    part(
        &format!("paper 5.2 over {transport}: Eve offline, Alex -> Alice -> Bob -> Eve -> Dave (bound 1000 ms)"),
        &report.offline_timeline,
        &report.offline,
    );
    let _ = writeln!(
        out,
        "== balances in yoctoNEAR: channels (received - paid and acknowledged), unacknowledged, stake on chain"
    );
    for b in &report.balances {
        let _ = writeln!(
            out,
            "   {:<6} {:>+10}  unacked {:>6}  stake {}",
            b.name, b.net, b.unacked, b.stake
        );
    }
    let total: i128 = report.balances.iter().map(|b| b.net).sum();
    let _ = writeln!(out, "   channel nets sum to {total} (money is conserved)");
    out
}

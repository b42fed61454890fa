//! Transfer progress: indicatif bars (bytes, rate, ETA, one per provider, money spent),
//! JSON lines for scripts, or nothing.

use std::collections::HashMap;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use por_protocol::{Amount, NodeId};

/// What a transfer reports as it goes.
pub trait Progress: Send + Sync {
    /// The transfer starts: `total` bytes, `done` of them already verified (resume).
    fn start(&self, name: &str, total: u64, done: u64, providers: &[NodeId]);
    /// `bytes` more verified from `provider`; `spent` so far in all.
    fn piece(&self, provider: &NodeId, bytes: u64, spent: Amount);
    /// Something worth telling (a provider dropped, a re-route).
    fn note(&self, message: &str);
    /// The transfer ended.
    fn finish(&self, spent: Amount);
}

/// No output.
#[derive(Debug, Default)]
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _: &str, _: u64, _: u64, _: &[NodeId]) {}
    fn piece(&self, _: &NodeId, _: u64, _: Amount) {}
    fn note(&self, _: &str) {}
    fn finish(&self, _: Amount) {}
}

/// One JSON object per line on stdout.
#[derive(Debug, Default)]
pub struct JsonLines;

fn short(id: &NodeId) -> String {
    por_protocol::hex::encode(&id.0[..6])
}

impl Progress for JsonLines {
    fn start(&self, name: &str, total: u64, done: u64, providers: &[NodeId]) {
        let p: Vec<String> = providers
            .iter()
            .map(|p| por_protocol::hex::encode(&p.0))
            .collect();
        println!(
            "{}",
            serde_json::json!({"event": "start", "name": name, "total": total, "done": done, "providers": p})
        );
    }
    fn piece(&self, provider: &NodeId, bytes: u64, spent: Amount) {
        println!(
            "{}",
            serde_json::json!({"event": "piece", "provider": por_protocol::hex::encode(&provider.0), "bytes": bytes, "spent": spent.0.to_string()})
        );
    }
    fn note(&self, message: &str) {
        println!(
            "{}",
            serde_json::json!({"event": "note", "message": message})
        );
    }
    fn finish(&self, spent: Amount) {
        println!(
            "{}",
            serde_json::json!({"event": "finish", "spent": spent.0.to_string()})
        );
    }
}

/// indicatif bars on stderr: the total (bytes, rate, ETA, spent) and one per provider.
#[derive(Default)]
pub struct Bars {
    multi: MultiProgress,
    total: Mutex<Option<ProgressBar>>,
    providers: Mutex<HashMap<NodeId, ProgressBar>>,
}

impl std::fmt::Debug for Bars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bars")
    }
}

impl Progress for Bars {
    fn start(&self, name: &str, total: u64, done: u64, providers: &[NodeId]) {
        let style = ProgressStyle::with_template(
            "{prefix:>14} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let bar = self.multi.add(ProgressBar::new(total));
        bar.set_style(style);
        bar.set_prefix(name.chars().take(14).collect::<String>());
        bar.set_position(done);
        bar.set_message("spent 0 yocto");
        let each = ProgressStyle::with_template("{prefix:>14} {bytes} {bytes_per_sec} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        if let Ok(mut map) = self.providers.lock() {
            for p in providers {
                let b = self.multi.add(ProgressBar::new(total));
                b.set_style(each.clone());
                b.set_prefix(format!("from {}", short(p)));
                map.insert(*p, b);
            }
        }
        if let Ok(mut t) = self.total.lock() {
            *t = Some(bar);
        }
    }
    fn piece(&self, provider: &NodeId, bytes: u64, spent: Amount) {
        if let Ok(t) = self.total.lock() {
            if let Some(bar) = t.as_ref() {
                bar.inc(bytes);
                bar.set_message(format!("spent {spent} yocto"));
            }
        }
        if let Ok(map) = self.providers.lock() {
            if let Some(b) = map.get(provider) {
                b.inc(bytes);
            }
        }
    }
    fn note(&self, message: &str) {
        let _ = self.multi.println(message);
    }
    fn finish(&self, spent: Amount) {
        if let Ok(t) = self.total.lock() {
            if let Some(bar) = t.as_ref() {
                bar.finish_with_message(format!("spent {spent} yocto"));
            }
        }
        if let Ok(map) = self.providers.lock() {
            for b in map.values() {
                b.finish();
            }
        }
    }
}

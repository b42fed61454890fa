//! The embedded chain's memory does not grow with the calls it runs: every view and
//! call runs the contract on near-vm-runner, and the loaded module is kept once (it
//! was loaded anew per call and never freed: about 7 MiB a call). Its own test binary,
//! so that no other test's allocations move the figure.
#![allow(clippy::unwrap_used)]

mod common;

use por_chain::local::{Clock, LocalChain};
use serde_json::json;

/// This process's resident memory, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn two_hundred_contract_runs_leave_resident_memory_where_it_was() {
    let (dir, mut chain) = common::chain("memory", "por.local", Clock::Manual(0));
    chain.fund("por.local", 10u128.pow(25)).unwrap();
    chain
        .ensure_initialised(por_chain::local::dev_config())
        .unwrap();
    // Each view asks about another account, so none is answered from the view cache:
    // every one runs the contract.
    let mut runs = 0u64;
    let mut view = |chain: &LocalChain, i: u64| {
        let args = json!({"account": format!("n{i}.local")}).to_string();
        chain.view("get_node", args.as_bytes()).unwrap();
        runs += 1;
    };
    for i in 0..20 {
        view(&chain, i);
    }
    let before = rss_kib();
    let executed = chain.views_executed();
    for i in 20..220 {
        view(&chain, i);
    }
    assert_eq!(
        chain.views_executed() - executed,
        200,
        "every view ran the contract"
    );
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    // Loading the module per run grew this by about 1.4 GiB.
    assert!(
        grown_mib < 64,
        "resident memory grew {grown_mib} MiB over 200 contract runs ({runs} in all)"
    );
    // The compiled code is kept beside the database: a reopened chain finds it.
    assert!(dir.path().join("chain.redb.contracts").is_dir());
}

//! Whether a test may make network namespaces here.

use std::process::Command;

/// Root, and iproute2's `ip netns` works.
pub(crate) fn netns_possible() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    root && Command::new("ip")
        .args(["netns", "list"])
        .output()
        .is_ok_and(|o| o.status.success())
}

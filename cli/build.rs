//! Tells the tests whether a NEAR sandbox `neard` is available
//! (`NEAR_SANDBOX_BIN_PATH`): the node suite's NEAR runs (`tests/near_sandbox.rs`) run
//! only then, and are reported as ignored (never as passed) otherwise.

fn main() {
    println!("cargo:rerun-if-env-changed=NEAR_SANDBOX_BIN_PATH");
    println!("cargo:rustc-check-cfg=cfg(near_sandbox)");
    if std::env::var_os("NEAR_SANDBOX_BIN_PATH").is_some_and(|p| !p.is_empty()) {
        println!("cargo:rustc-cfg=near_sandbox");
    }
}

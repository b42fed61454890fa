//! Tells the tests whether a NEAR sandbox binary is available: the near-workspaces
//! integration tests run only then, and are reported as ignored (never as passed)
//! otherwise.

fn main() {
    println!("cargo:rerun-if-env-changed=NEAR_SANDBOX_BIN_PATH");
    println!("cargo:rustc-check-cfg=cfg(near_sandbox)");
    if std::env::var_os("NEAR_SANDBOX_BIN_PATH").is_some_and(|p| !p.is_empty()) {
        println!("cargo:rustc-cfg=near_sandbox");
    }
}

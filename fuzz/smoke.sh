#!/usr/bin/env bash
# Runs the fuzz targets for a short while (POR_FUZZ_SECONDS each, default 20) from
# its seed corpus in corpus/<target>; new inputs go to work/<target> (not committed).
# A crash fails the run and leaves its input in artifacts/<target>/. Needs the nightly
# toolchain (skipped, saying so, without it) and cargo-fuzz (installed if missing).
set -euo pipefail
cd "$(dirname "$0")"
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "SKIPPED fuzz smoke: no nightly toolchain (rustup toolchain install nightly)"
  exit 0
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
secs=${POR_FUZZ_SECONDS:-20}
# The targets that need the node (settings, files_decode, wal) build the node and its
# embedded chain: POR_FUZZ_FEATURES=node adds them.
features=${POR_FUZZ_FEATURES:-}
targets="frame_decoder message signed engine_peer scenario consistency contract"
if [ "$features" = node ]; then
  targets="$targets settings files_decode wal"
fi
cargo +nightly fuzz build -O ${features:+--features "$features"}
for target in $targets; do
  mkdir -p "corpus/$target" "work/$target"
  echo "== fuzz $target for ${secs}s"
  log="work/$target.log"
  if ! cargo +nightly fuzz run -O ${features:+--features "$features"} "$target" "work/$target" "corpus/$target" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz $target failed; the input is in fuzz/artifacts/$target/"
    exit 1
  fi
  grep -E "^stat::(number_of_executed_units|peak_rss_mb)" "$log" || true
done

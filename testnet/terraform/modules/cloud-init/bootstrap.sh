#!/usr/bin/env bash
# The boot script of a por VM (cloud-init runs it as root, once). It installs the por
# binary, writes the node's key and config, and runs the node: as a systemd service
# where there is systemd, else in the background (POR_SYSTEMD=0, as the bootstrap
# test runs it inside a network namespace).
#
# Settings (environment):
#   POR_BINARY_URL   where to download the release binary, or
#   POR_BINARY_PATH  a binary already on this machine (the test's)
#   POR_PREFIX       install prefix (default /opt/por)
#   POR_ACCOUNT      the NEAR account the node signs as (required)
#   POR_LISTEN       address to listen on for peers (default 0.0.0.0:7000)
#   POR_ADVERTISE    address peers dial (default: POR_LISTEN; with POR_PUBLIC_IP_URL,
#                    that URL's answer (the cloud's metadata service) and the port)
#   POR_TRANSPORT    tcp or quic (default tcp)
#   POR_CHAIN        near or served (default near)
#   POR_NEAR_RPC, POR_NEAR_CONTRACT, POR_NEAR_KEY_JSON
#                    with POR_CHAIN=near: the RPC, the contract account, and the
#                    account's near-cli credentials JSON (written 0600)
#   POR_CHAIN_ADDR, POR_FAUCET_NEAR            with POR_CHAIN=served (a devnet's chain;
#                                              POR_FAUCET_NEAR funds the account first)
#   POR_STAKE        yoctoNEAR to stake at start (default 10 NEAR)
#   POR_METRICS      metrics listener (default 127.0.0.1:9100: private)
#   POR_SYSTEMD      1 (default when systemd runs) or 0
set -euo pipefail

fail() { echo "bootstrap: $*" >&2; exit 1; }

prefix="${POR_PREFIX:-/opt/por}"
account="${POR_ACCOUNT:?POR_ACCOUNT: the NEAR account of this node}"
listen="${POR_LISTEN:-0.0.0.0:7000}"
if [ -n "${POR_ADVERTISE:-}" ]; then
  advertise="$POR_ADVERTISE"
elif [ -n "${POR_PUBLIC_IP_URL:-}" ]; then
  public_ip="$(curl -fsS --retry 5 "$POR_PUBLIC_IP_URL")" || fail "cannot read $POR_PUBLIC_IP_URL"
  advertise="$public_ip:${listen##*:}"
else
  advertise="$listen"
fi
transport="${POR_TRANSPORT:-tcp}"
chain="${POR_CHAIN:-near}"
stake="${POR_STAKE:-10000000000000000000000000}"
metrics="${POR_METRICS:-127.0.0.1:9100}"
if [ -z "${POR_SYSTEMD:-}" ]; then
  if [ -d /run/systemd/system ]; then POR_SYSTEMD=1; else POR_SYSTEMD=0; fi
fi
case "$transport" in tcp|quic) ;; *) fail "POR_TRANSPORT=$transport: tcp or quic" ;; esac

mkdir -p "$prefix/bin" "$prefix/node"
bin="$prefix/bin/por"
if [ -n "${POR_BINARY_PATH:-}" ]; then
  install -m 0755 "$POR_BINARY_PATH" "$bin"
elif [ -n "${POR_BINARY_URL:-}" ]; then
  curl -fsSL --retry 5 -o "$bin.tmp" "$POR_BINARY_URL" || fail "cannot download $POR_BINARY_URL"
  chmod 0755 "$bin.tmp" && mv "$bin.tmp" "$bin"
else
  fail "give POR_BINARY_URL or POR_BINARY_PATH"
fi
"$bin" --version >/dev/null || fail "$bin does not run"

# The key is made once: a rerun of this script keeps the node's identity.
if [ ! -f "$prefix/node/node.key" ]; then
  "$bin" init --dir "$prefix/node" --account "$account" --listen "$listen" >/dev/null
fi

case "$chain" in
  near)
    key_json="$prefix/node/near-key.json"
    (umask 077; printf '%s' "${POR_NEAR_KEY_JSON:?POR_NEAR_KEY_JSON: the account credentials}" > "$key_json")
    chain_settings="chain = \"near\"
near_rpc = \"${POR_NEAR_RPC:?POR_NEAR_RPC}\"
near_contract = \"${POR_NEAR_CONTRACT:?POR_NEAR_CONTRACT}\"
near_key_file = \"$key_json\""
    ;;
  served)
    addr="${POR_CHAIN_ADDR:?POR_CHAIN_ADDR: the served chain}"
    chain_settings="chain = \"served\"
chain_addr = \"$addr\""
    if [ -n "${POR_FAUCET_NEAR:-}" ]; then
      "$bin" chain fund --chain-addr "$addr" --key-file "$prefix/node/node.key" \
        "$account" "${POR_FAUCET_NEAR}000000000000000000000000" >/dev/null
    fi
    ;;
  *) fail "POR_CHAIN=$chain: near or served" ;;
esac

# The node's whole configuration, in its config file (`por init` wrote the key; this
# replaces its template), so that the operator's `por status`, `por channel open`
# and `por request --config /opt/por/node/por.toml` on the VM read the same settings.
cat > "$prefix/node/por.toml" <<TOML
# Written by the testnet boot script.
account = "$account"
key_file = "$prefix/node/node.key"
data_dir = "$prefix/node/data"
listen = "$listen"
advertise = "$advertise"
transport = "$transport"
control = "127.0.0.1:7100"
metrics_listen = "$metrics"
stake = "$stake"
sever_policy = "wait_syncs:3"
$chain_settings
TOML

args=(node run --config "$prefix/node/por.toml")
printf '%q ' "$bin" "${args[@]}" > "$prefix/node/command"

if [ "$POR_SYSTEMD" = 1 ]; then
  cat > /etc/systemd/system/por.service <<UNIT
[Unit]
Description=por node (Proof of Response)
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=$(cat "$prefix/node/command")
Restart=always
RestartSec=2
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
UNIT
  systemctl daemon-reload
  systemctl enable --now por.service
else
  nohup "$bin" "${args[@]}" > "$prefix/node/ready" 2> "$prefix/node/node.log" < /dev/null &
  echo $! > "$prefix/node/pid"
fi
echo "bootstrap: por node of $account started ($([ "$POR_SYSTEMD" = 1 ] && echo systemd || echo "pid $(cat "$prefix/node/pid")"))"

#!/usr/bin/env bash
# From Terraform's outputs to a running network, from the operator's machine:
#   1. waits until every VM's node answers (`por status` over SSH);
#   2. opens the channels of a ring over the nodes (sorted by name), one side
#      proposing and the other confirming, each on its own VM with its own key;
#   3. runs load: each node sends REQUESTS requests to the node after the next;
#   4. collects every node's status and the requests' outcomes into report/ and
#      prints a summary (outcomes, each node's net earnings, both ends of every
#      channel agreeing).
#
#   testnet/terraform/deploy.sh [report-dir]
# Settings: DEPOSIT (yoctoNEAR per side, default 1 NEAR), LATENCY_MS (promised one
# way per channel, default 150), REQUESTS (default 100), NODES_JSON (a file holding
# `terraform output -json nodes`; default: run terraform), POR_SSH (how to run a
# command on a node, given its ip: default `ssh root@<ip>`).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-report}"
deposit="${DEPOSIT:-1000000000000000000000000}"
latency="${LATENCY_MS:-150}"
requests="${REQUESTS:-100}"
mkdir -p "$out"
if [ -n "${NODES_JSON:-}" ]; then
  cp "$NODES_JSON" "$out/nodes.json"
else
  terraform -chdir="$here" output -json nodes > "$out/nodes.json"
fi
on() { # on <ip> <command...>: run a por command on a node
  local ip="$1"; shift
  if [ -n "${POR_SSH:-}" ]; then $POR_SSH "$ip" "$@"; else ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new "root@$ip" "$@"; fi
}
por=/opt/por/bin/por
conf=/opt/por/node/por.toml
mapfile -t names < <(python3 -c 'import json,sys; print("\n".join(sorted(json.load(open(sys.argv[1])))))' "$out/nodes.json")
field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]][sys.argv[3]])' "$out/nodes.json" "$1" "$2"; }
n=${#names[@]}
[ "$n" -ge 2 ] || { echo "deploy: $n nodes in the outputs; a network needs 2" >&2; exit 1; }

echo "deploy: $n nodes; waiting for each to answer"
for name in "${names[@]}"; do
  ip=$(field "$name" ip)
  for _ in $(seq 120); do
    if on "$ip" "$por" status --config "$conf" >/dev/null 2>&1; then break; fi
    sleep 5
  done
  on "$ip" "$por" status --config "$conf" > "$out/$name.status.before.json"
done

echo "deploy: opening a ring of $n channels"
for i in $(seq 0 $((n - 1))); do
  a=${names[$i]}; b=${names[$(((i + 1) % n))]}
  [ "$n" -eq 2 ] && [ "$i" -eq 1 ] && break
  proposed=$(on "$(field "$a" ip)" "$por" channel open --config "$conf" \
    --peer "$(field "$b" account)" --deposit "$deposit" --latency-ms "$latency")
  id=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["proposed"])' "$proposed")
  on "$(field "$b" ip)" "$por" channel confirm --config "$conf" --id "$id" --deposit "$deposit" >/dev/null
  echo "  $a – $b: channel $id"
done

echo "deploy: load, $requests requests from each node"
sleep 10 # the nodes learn the channels from the chain
pids=()
for i in $(seq 0 $((n - 1))); do
  a=${names[$i]}; c=${names[$(((i + 2) % n))]}
  ( for _ in $(seq "$requests"); do
      on "$(field "$a" ip)" "$por" request --config "$conf" --server "$(field "$c" account)" ping || echo '{"kind":"refused"}'
    done > "$out/$a.outcomes.jsonl" ) &
  pids+=($!)
done
wait "${pids[@]}"

for name in "${names[@]}"; do
  on "$(field "$name" ip)" "$por" status --config "$conf" > "$out/$name.status.json"
done
python3 - "$out" "${names[@]}" <<'PY'
import json, sys, collections, pathlib
out, names = pathlib.Path(sys.argv[1]), sys.argv[2:]
kinds = collections.Counter()
for n in names:
    for line in (out / f"{n}.outcomes.jsonl").read_text().splitlines():
        try:
            kinds[json.loads(line).get("kind", "refused")] += 1
        except json.JSONDecodeError:
            kinds["refused"] += 1
status = {n: json.loads((out / f"{n}.status.json").read_text()) for n in names}
by_id = {s["id"]: n for n, s in status.items()}
agree, rows = True, []
for n, s in status.items():
    got = sum(int(c["received"]) for c in s["channels"])
    paid = sum(int(c["paid"]) for c in s["channels"])
    rows.append(f"| {n} | {got} | {paid} | {got - paid} |")
    for c in s["channels"]:
        peer = by_id.get(c["peer"])
        if peer is None:
            continue
        other = next(x for x in status[peer]["channels"] if x["peer"] == s["id"])
        if int(c["paid"]) - int(other["received"]) not in (0, int(c["unacked"])):
            agree = False
summary = "\n".join([f"# Testnet report: {len(names)} nodes", "", f"Outcomes: {dict(kinds)}", "",
                     "| node | received | paid | net |", "|---|---|---|---|", *rows, "",
                     f"Both ends of every channel agree: **{agree}**"])
(out / "report.md").write_text(summary + "\n")
print(summary)
sys.exit(0 if agree else 1)
PY

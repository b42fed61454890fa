# The cloud-init user data of one node: it writes the boot script (the very file the
# bootstrap test runs) and runs it with this node's settings. No provider: this
# module validates offline.

terraform {
  required_version = ">= 1.0"
}

locals {
  user_data = templatefile("${path.module}/cloud-init.yaml.tftpl", {
    bootstrap     = file("${path.module}/bootstrap.sh")
    binary_url    = var.por_binary_url
    account       = var.account
    near_key_json = var.near_key_json
    near_rpc      = var.near_rpc
    near_contract = var.near_contract
    transport     = var.transport
    listen        = "0.0.0.0:${var.node_port}"
    public_ip_url = var.public_ip_url
  })
}

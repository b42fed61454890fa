output "nodes" {
  description = "Each node: region, public address, its NEAR account (testnet/deploy.sh reads this)."
  value = {
    for k, d in digitalocean_droplet.node : k => {
      region  = d.region
      ip      = d.ipv4_address
      address = "${d.ipv4_address}:${var.node_port}"
      account = var.accounts[k].account
    }
  }
  sensitive = true
}

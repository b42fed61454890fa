# N droplets across DigitalOcean regions, each booted by cloud-init into a por node
# (testnet/terraform/modules/cloud-init/bootstrap.sh). Peers reach the node port from anywhere; SSH and
# metrics only from the operator.

locals {
  nodes = {
    for pair in setproduct(var.regions, range(var.nodes_per_region)) :
    "${var.name}-${pair[0]}-${pair[1]}" => { region = pair[0], index = pair[1] }
  }
}

module "boot" {
  source   = "./modules/cloud-init"
  for_each = local.nodes

  por_binary_url = var.por_binary_url
  account        = var.accounts[each.key].account
  near_key_json  = var.accounts[each.key].key_json
  near_rpc       = var.near_rpc
  near_contract  = var.near_contract
  transport      = var.transport
  node_port      = var.node_port
}

resource "digitalocean_droplet" "node" {
  for_each = local.nodes

  name      = each.key
  region    = each.value.region
  size      = var.size
  image     = var.image
  ssh_keys  = var.ssh_key_fingerprints
  user_data = module.boot[each.key].user_data
  tags      = [var.name]
  ipv6      = false
}

resource "digitalocean_firewall" "nodes" {
  name = "${var.name}-nodes"
  tags = [var.name]

  inbound_rule {
    protocol         = "tcp"
    port_range       = tostring(var.node_port)
    source_addresses = ["0.0.0.0/0", "::/0"]
  }

  inbound_rule {
    protocol         = "udp"
    port_range       = tostring(var.node_port)
    source_addresses = ["0.0.0.0/0", "::/0"]
  }

  inbound_rule {
    protocol         = "tcp"
    port_range       = "22"
    source_addresses = var.operator_cidrs
  }

  # Metrics listen on loopback (the boot script's default); an operator reads them
  # over SSH. Nothing else is open.

  outbound_rule {
    protocol              = "tcp"
    port_range            = "1-65535"
    destination_addresses = ["0.0.0.0/0", "::/0"]
  }

  outbound_rule {
    protocol              = "udp"
    port_range            = "1-65535"
    destination_addresses = ["0.0.0.0/0", "::/0"]
  }
}

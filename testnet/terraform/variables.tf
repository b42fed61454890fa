variable "name" {
  description = "Prefix of every resource (droplets, firewall, tags)."
  type        = string
  default     = "por-testnet"
}

variable "nodes_per_region" {
  description = "Droplets in each region."
  type        = number
  default     = 2
  validation {
    condition     = var.nodes_per_region >= 1 && var.nodes_per_region <= 20
    error_message = "nodes_per_region: 1 to 20."
  }
}

variable "regions" {
  description = "DigitalOcean regions the nodes are spread over (one provider reaches all of them)."
  type        = list(string)
  default     = ["nyc3", "sfo3", "lon1", "fra1", "sgp1", "syd1"]
}

variable "size" {
  description = "Droplet size: 1 vCPU and 2 GB hold a node with room to spare."
  type        = string
  default     = "s-1vcpu-2gb"
}

variable "image" {
  description = "Droplet image (cloud-init and systemd are all the boot script needs)."
  type        = string
  default     = "debian-12-x64"
}

variable "ssh_key_fingerprints" {
  description = "SSH keys (fingerprints, already in the DigitalOcean account) the operator logs in with."
  type        = list(string)
}

variable "operator_cidrs" {
  description = "Where the operator connects from: SSH and the nodes' metrics are open to these only."
  type        = list(string)
}

variable "por_binary_url" {
  description = "The por release binary (linux x86_64) the VMs download."
  type        = string
}

variable "transport" {
  description = "tcp or quic."
  type        = string
  default     = "tcp"
  validation {
    condition     = contains(["tcp", "quic"], var.transport)
    error_message = "transport: tcp or quic."
  }
}

variable "node_port" {
  description = "The port nodes listen on for peers (TCP, and UDP for QUIC)."
  type        = number
  default     = 7000
}

variable "near_rpc" {
  description = "NEAR RPC the nodes follow (testnet by default)."
  type        = string
  default     = "https://rpc.testnet.near.org"
}

variable "near_contract" {
  description = "The por contract account on NEAR (deployed with `por contract deploy`)."
  type        = string
}

variable "accounts" {
  description = "Each node's NEAR account and its near-cli credentials JSON, by node name (`<name>-<region>-<i>`): made by testnet/deploy.sh accounts."
  type = map(object({
    account  = string
    key_json = string
  }))
  sensitive = true
}

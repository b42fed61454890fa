variable "por_binary_url" {
  description = "The por release binary the VM downloads."
  type        = string
}

variable "account" {
  description = "The node's NEAR account."
  type        = string
}

variable "near_key_json" {
  description = "The account's near-cli credentials JSON."
  type        = string
  sensitive   = true
}

variable "near_rpc" {
  description = "NEAR RPC."
  type        = string
}

variable "near_contract" {
  description = "The por contract account."
  type        = string
}

variable "transport" {
  description = "tcp or quic."
  type        = string
  default     = "tcp"
}

variable "node_port" {
  description = "The node's peer port."
  type        = number
  default     = 7000
}

variable "public_ip_url" {
  description = "Where the VM reads its public address (DigitalOcean's metadata service by default)."
  type        = string
  default     = "http://169.254.169.254/metadata/v1/interfaces/public/0/ipv4/address"
}

terraform {
  required_version = ">= 1.0"
  required_providers {
    digitalocean = {
      source  = "digitalocean/digitalocean"
      version = "~> 2.40"
    }
  }
}

provider "digitalocean" {
  # The API token: `export DIGITALOCEAN_TOKEN=...` (never in a file of this tree).
}

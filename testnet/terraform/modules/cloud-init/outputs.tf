output "user_data" {
  description = "The cloud-init document for the droplet."
  value       = local.user_data
  sensitive   = true
}

output "name" {
  description = "Cluster name."
  value       = google_container_cluster.this.name
}

output "location" {
  description = "Cluster location (the region)."
  value       = google_container_cluster.this.location
}

output "endpoint" {
  description = "Control plane endpoint the kubernetes/helm providers use: the private one when enable_private_endpoint is set."
  value       = var.enable_private_endpoint ? google_container_cluster.this.private_cluster_config[0].private_endpoint : google_container_cluster.this.endpoint
}

output "ca_certificate" {
  description = "Base64 PEM of the cluster CA."
  value       = google_container_cluster.this.master_auth[0].cluster_ca_certificate
}

output "workload_pool" {
  description = "Workload Identity pool (<project>.svc.id.goog): bind KSAs with principal://iam.googleapis.com/projects/<number>/locations/global/workloadIdentityPools/<pool>/subject/ns/<namespace>/sa/<ksa>."
  value       = local.workload_pool
}

output "node_service_account" {
  description = "E-mail of the nodes' service account."
  value       = google_service_account.nodes.email
}

output "network" {
  description = "Self link of the cluster's VPC."
  value       = google_compute_network.this.self_link
}

output "cluster_name" {
  description = "GKE cluster name (gcloud container clusters get-credentials <name> --region <region>)."
  value       = module.gke.name
}

output "region" {
  description = "Region of the cluster."
  value       = module.gke.location
}

output "workload_pool" {
  description = "Workload Identity pool of the cluster."
  value       = module.gke.workload_pool
}

output "kafka_bootstrap_servers" {
  description = "In-cluster Kafka bootstrap address."
  value       = module.platform.kafka_bootstrap_servers
}

output "clickhouse_url" {
  description = "In-cluster ClickHouse HTTP URL."
  value       = module.platform.clickhouse_url
}

output "prometheus_url" {
  description = "In-cluster Prometheus URL."
  value       = module.platform.prometheus_url
}

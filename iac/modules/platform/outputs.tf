output "kafka_bootstrap_servers" {
  description = "In-cluster Kafka bootstrap address (PLAINTEXT)."
  value       = local.kafka_bootstrap
}

output "clickhouse_url" {
  description = "In-cluster ClickHouse HTTP URL."
  value       = local.clickhouse_url
}

output "clickhouse_credentials_secret" {
  description = "namespace/name of the Secret with the ClickHouse user's username and password."
  value       = "${local.ns.clickhouse}/${local.clickhouse_secret_name}"
}

output "prometheus_url" {
  description = "In-cluster Prometheus URL."
  value       = local.prometheus_url
}

output "grafana_admin_secret" {
  description = "namespace/name of the Secret with Grafana's admin credentials."
  value       = "${local.ns.monitoring}/${kubernetes_secret_v1.grafana_admin.metadata[0].name}"
}

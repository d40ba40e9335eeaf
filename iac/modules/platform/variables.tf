variable "environment" {
  description = "Environment name (dev, prod): sizes nothing by itself, labels and names things."
  type        = string
}

variable "namespaces" {
  description = "Namespaces of the platform's parts."
  type = object({
    monitoring = optional(string, "monitoring")
    kafka      = optional(string, "kafka")
    clickhouse = optional(string, "clickhouse")
    keda       = optional(string, "keda")
    flightline = optional(string, "flightline")
  })
  default = {}
}

variable "chart_versions" {
  description = "Pinned versions of the third-party Helm charts."
  type = object({
    kube_prometheus_stack = optional(string, "69.8.2")
    strimzi               = optional(string, "0.45.0")
    clickhouse_operator   = optional(string, "0.25.6")
    prometheus_adapter    = optional(string, "4.11.0")
    keda                  = optional(string, "2.16.1")
  })
  default = {}
}

variable "create_custom_resources" {
  description = "Create the Kafka and ClickHouseInstallation resources (kubernetes_manifest). kubernetes_manifest needs its CRD at plan time, so a first apply on a new cluster runs with false (installs the operators and their CRDs), then again with true."
  type        = bool
  default     = true
}

variable "enable_keda" {
  description = "Install KEDA (for FlightPipelines whose autoscaling provider is KEDA)."
  type        = bool
  default     = false
}

variable "kafka" {
  description = "The Strimzi Kafka cluster (KRaft, one dual-role node pool)."
  type = object({
    name               = optional(string, "flightline")
    version            = optional(string, "3.9.0")
    replicas           = optional(number, 3)
    storage_size       = optional(string, "100Gi")
    replication_factor = optional(number, 3)
    min_insync         = optional(number, 2)
    cpu                = optional(string, "1")
    memory             = optional(string, "4Gi")
  })
  default = {}
}

variable "clickhouse" {
  description = "The ClickHouseInstallation (one shard; replicas > 1 would also need ClickHouse Keeper and Replicated tables)."
  type = object({
    name         = optional(string, "flightline")
    image        = optional(string, "clickhouse/clickhouse-server:25.3")
    storage_size = optional(string, "100Gi")
    cpu          = optional(string, "2")
    memory       = optional(string, "8Gi")
    user         = optional(string, "flightline")
  })
  default = {}
}

variable "prometheus_retention" {
  description = "How long Prometheus keeps samples."
  type        = string
  default     = "15d"
}

variable "prometheus_storage_size" {
  description = "Prometheus' volume."
  type        = string
  default     = "50Gi"
}

variable "adapter_values_file" {
  description = "prometheus-adapter values (the custom-metrics rules Flightline's HPAs read). Null: the repository's charts/prometheus-adapter-values.yaml."
  type        = string
  default     = null
}

variable "flightline_chart_path" {
  description = "Path of the Flightline Helm chart. Null: the repository's charts/flightline."
  type        = string
  default     = null
}

variable "flightline_image_tag" {
  description = "Tag of the ghcr.io/flightline/flightline-* images, the operator's and the pipelines' (null: the chart's appVersion)."
  type        = string
  default     = null
}

variable "flightline_values" {
  description = "Extra values for the Flightline chart, merged over the wiring this module computes."
  type        = any
  default     = {}
}

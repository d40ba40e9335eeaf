variable "project_id" {
  description = "GCP project of this environment."
  type        = string
}

variable "environment" {
  description = "Environment name: the <env> of flightline-<env>-<region>-<purpose>."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{1,7}$", var.environment))
    error_message = "environment must be 2-8 characters of [a-z0-9], starting with a letter (it goes into every name)."
  }
}

variable "region" {
  description = "GCP region (southamerica-west1 is Santiago, where the SCL data comes from)."
  type        = string
}

variable "node_locations" {
  description = "Zones of the region the nodes run in (empty: GKE's default)."
  type        = list(string)
  default     = []
}

variable "release_channel" {
  description = "GKE release channel."
  type        = string
  default     = "REGULAR"
}

variable "enable_private_endpoint" {
  description = "Control plane on its private IP only (Terraform and CI must then run inside the VPC)."
  type        = bool
  default     = false
}

variable "master_authorized_networks" {
  description = "CIDRs allowed to reach the control plane."
  type = list(object({
    cidr_block   = string
    display_name = string
  }))
  default = []
}

variable "network" {
  description = "CIDRs of the cluster's VPC."
  type = object({
    subnet   = string
    pods     = string
    services = string
    master   = string
  })
}

variable "node_pools" {
  description = "Autoscaled node pools (see modules/gke-cluster)."
  type = map(object({
    machine_type = string
    min_count    = number
    max_count    = number
    disk_size_gb = optional(number, 100)
    disk_type    = optional(string, "pd-balanced")
    spot         = optional(bool, false)
    labels       = optional(map(string), {})
    taints = optional(list(object({
      key    = string
      value  = string
      effect = string
    })), [])
  }))
}

variable "database_encryption_key" {
  description = "Cloud KMS key for application-layer Secret encryption (null: off)."
  type        = string
  default     = null
}

variable "deletion_protection" {
  description = "Refuse to destroy the cluster."
  type        = bool
  default     = true
}

variable "create_custom_resources" {
  description = "Create the Kafka and ClickHouseInstallation resources: false on a cluster's very first apply (their CRDs do not exist yet at plan time), true after."
  type        = bool
  default     = true
}

variable "enable_keda" {
  description = "Install KEDA."
  type        = bool
  default     = false
}

variable "kafka" {
  description = "Kafka cluster settings (see modules/platform)."
  type        = any
  default     = {}
}

variable "clickhouse" {
  description = "ClickHouseInstallation settings (see modules/platform)."
  type        = any
  default     = {}
}

variable "flightline_image_tag" {
  description = "Tag of the Flightline images (null: the chart's appVersion)."
  type        = string
  default     = null
}

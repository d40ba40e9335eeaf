variable "project_id" {
  description = "GCP project that holds the cluster, its network and its node service account."
  type        = string
}

variable "region" {
  description = "Region of the cluster (a regional cluster: control plane and nodes spread over its zones)."
  type        = string
}

variable "node_locations" {
  description = "Zones of the region the nodes run in (empty: GKE's default, three zones)."
  type        = list(string)
  default     = []
}

variable "names" {
  description = "Names of the resources this module creates, from the caller's naming convention (flightline-<env>-<region>-<purpose>). node_service_account is an account id: 6-30 characters."
  type = object({
    cluster              = string
    network              = string
    subnetwork           = string
    router               = string
    nat                  = string
    node_service_account = string
  })

  validation {
    condition     = length(var.names.cluster) <= 40 && can(regex("^[a-z]([a-z0-9-]*[a-z0-9])?$", var.names.cluster))
    error_message = "names.cluster must be at most 40 characters of [a-z0-9-] (a GKE limit)."
  }

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.names.node_service_account))
    error_message = "names.node_service_account must be 6-30 characters of [a-z0-9-], starting with a letter."
  }
}

variable "labels" {
  description = "Labels on the cluster, its nodes and everything else that takes labels."
  type        = map(string)
  default     = {}
}

variable "subnet_cidr" {
  description = "Primary range of the nodes' subnetwork."
  type        = string
  default     = "10.10.0.0/20"
}

variable "pods_cidr" {
  description = "Secondary range for pod IPs (VPC-native)."
  type        = string
  default     = "10.20.0.0/14"
}

variable "services_cidr" {
  description = "Secondary range for Service IPs (VPC-native)."
  type        = string
  default     = "10.24.0.0/20"
}

variable "master_ipv4_cidr_block" {
  description = "/28 for the control plane's private endpoint."
  type        = string
  default     = "172.16.0.0/28"
}

variable "enable_private_endpoint" {
  description = "Serve the control plane only on its private IP. Then whatever runs Terraform's helm/kubernetes providers (and CI) must reach the VPC: a runner inside it, a bastion or Connect Gateway."
  type        = bool
  default     = false
}

variable "master_authorized_networks" {
  description = "CIDRs allowed to reach the control plane endpoint (the public one too, when it is enabled). Empty: none but the VPC."
  type = list(object({
    cidr_block   = string
    display_name = string
  }))
  default = []
}

variable "release_channel" {
  description = "GKE release channel: RAPID, REGULAR or STABLE."
  type        = string
  default     = "REGULAR"

  validation {
    condition     = contains(["RAPID", "REGULAR", "STABLE"], var.release_channel)
    error_message = "release_channel must be RAPID, REGULAR or STABLE."
  }
}

variable "node_pools" {
  description = "Autoscaled node pools, by name. min/max_count are totals over the pool's zones."
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

  validation {
    condition     = length(var.node_pools) > 0 && alltrue([for p in values(var.node_pools) : p.min_count <= p.max_count && p.max_count > 0])
    error_message = "node_pools needs at least one pool, each with 0 <= min_count <= max_count and max_count > 0."
  }
}

variable "node_service_account_roles" {
  description = "Project roles of the nodes' service account. roles/container.defaultNodeServiceAccount is the minimal set GKE nodes need (logs, metrics, resource metadata); images come from GHCR, so no Artifact Registry role."
  type        = list(string)
  default     = ["roles/container.defaultNodeServiceAccount"]
}

variable "database_encryption_key" {
  description = "Cloud KMS key (projects/.../cryptoKeys/...) that encrypts Kubernetes Secrets in etcd at the application layer. Null: Google's default encryption at rest only."
  type        = string
  default     = null
}

variable "binary_authorization" {
  description = "Enforce the project's Binary Authorization policy on this cluster."
  type        = bool
  default     = true
}

variable "rbac_security_group" {
  description = "Google Group for Google Groups for RBAC (gke-security-groups@<domain>). Null: off."
  type        = string
  default     = null
}

variable "deletion_protection" {
  description = "Refuse `terraform destroy` of the cluster."
  type        = bool
  default     = true
}

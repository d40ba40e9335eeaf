# The naming convention: flightline-<env>-<region>-<purpose>, e.g. flightline-prod-southamerica-west1-gke.
# Service-account ids allow only 30 characters, so they use the region's short form
# (southamerica-west1 -> sw1, europe-west4 -> ew4, us-central1 -> uc1): flightline-prod-sw1-nodes.
locals {
  region_parts = split("-", var.region)
  region_short = join("", concat(
    [for p in slice(local.region_parts, 0, length(local.region_parts) - 1) : substr(p, 0, 1)],
    [replace(local.region_parts[length(local.region_parts) - 1], "/^([a-z])[a-z]*([0-9]+)$/", "$1$2")],
  ))

  prefix       = "flightline-${var.environment}-${var.region}"
  short_prefix = "flightline-${var.environment}-${local.region_short}"

  names = {
    cluster              = "${local.prefix}-gke"
    network              = "${local.prefix}-vpc"
    subnetwork           = "${local.prefix}-nodes"
    router               = "${local.prefix}-router"
    nat                  = "${local.prefix}-nat"
    node_service_account = "${local.short_prefix}-nodes"
  }

  labels = {
    app         = "flightline"
    environment = var.environment
    region      = var.region
    managed-by  = "terraform"
  }
}

# One Flightline environment: a GKE cluster (modules/gke-cluster) and the platform on it
# (modules/platform). The single root module of every environment: which one is chosen at init by
# -backend-config=../envs/<env>/backend.gcs.tfbackend and at plan/apply by
# -var-file=../envs/<env>/terraform.tfvars (iac/README.md).

resource "google_project_service" "this" {
  for_each = toset([
    "compute.googleapis.com",
    "container.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
  ])

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

module "gke" {
  source = "../modules/gke-cluster"

  project_id     = var.project_id
  region         = var.region
  node_locations = var.node_locations
  names          = local.names
  labels         = local.labels

  subnet_cidr            = var.network.subnet
  pods_cidr              = var.network.pods
  services_cidr          = var.network.services
  master_ipv4_cidr_block = var.network.master

  release_channel            = var.release_channel
  enable_private_endpoint    = var.enable_private_endpoint
  master_authorized_networks = var.master_authorized_networks
  node_pools                 = var.node_pools
  database_encryption_key    = var.database_encryption_key
  deletion_protection        = var.deletion_protection

  depends_on = [google_project_service.this]
}

module "platform" {
  source = "../modules/platform"

  environment             = var.environment
  create_custom_resources = var.create_custom_resources
  enable_keda             = var.enable_keda
  kafka                   = var.kafka
  clickhouse              = var.clickhouse
  flightline_image_tag    = var.flightline_image_tag

  depends_on = [module.gke]
}

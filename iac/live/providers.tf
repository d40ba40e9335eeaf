provider "google" {
  project        = var.project_id
  region         = var.region
  default_labels = local.labels
}

# Short-lived OAuth token of whoever runs Terraform (in CI: the Workload Identity Federation
# credentials of google-github-actions/auth). No kubeconfig, no keys.
data "google_client_config" "current" {}

provider "kubernetes" {
  host                   = "https://${module.gke.endpoint}"
  token                  = data.google_client_config.current.access_token
  cluster_ca_certificate = base64decode(module.gke.ca_certificate)
}

provider "helm" {
  kubernetes {
    host                   = "https://${module.gke.endpoint}"
    token                  = data.google_client_config.current.access_token
    cluster_ca_certificate = base64decode(module.gke.ca_certificate)
  }
}

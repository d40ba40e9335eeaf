# Exact provider versions for the root module of every environment. `terraform init` records their
# checksums in iac/live/.terraform.lock.hcl, one file for all environments (commit it; it could not be
# generated where these files were written: no provider registry was reachable).
terraform {
  required_version = ">= 1.9, < 2.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "6.49.0"
    }
    helm = {
      source  = "hashicorp/helm"
      version = "2.17.0"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "2.36.0"
    }
    random = {
      source  = "hashicorp/random"
      version = "3.7.2"
    }
  }
}

# State in GCS (versioned bucket, created once by hand or by a bootstrap module; backends take no
# variables). Named by the convention: flightline-<env>-<region>-tfstate.
terraform {
  backend "gcs" {
    bucket = "flightline-prod-southamerica-west1-tfstate"
    prefix = "envs/prod"
  }
}

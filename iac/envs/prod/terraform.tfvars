# The values of iac/live for prod: terraform -chdir=iac/live plan|apply -var-file=../envs/prod/terraform.tfvars
#
# prod: regional (three zones), private control plane endpoint (Terraform and CI run inside the VPC:
# a self-hosted runner or a bastion), KMS-encrypted Secrets, deletion protection,
# on-demand nodes, a three-broker Kafka with replication factor 3.
project_id  = "flightline-prod"
environment = "prod"
region      = "southamerica-west1"

node_locations  = ["southamerica-west1-a", "southamerica-west1-b", "southamerica-west1-c"]
release_channel = "STABLE"

enable_private_endpoint = true
master_authorized_networks = [
  # The VPC range of the self-hosted runners / bastion that run Terraform and kubectl.
  { cidr_block = "10.10.0.0/20", display_name = "cluster-vpc" },
]

network = {
  subnet   = "10.30.0.0/20"
  pods     = "10.40.0.0/14"
  services = "10.44.0.0/20"
  master   = "172.16.0.16/28"
}

node_pools = {
  general = {
    machine_type = "n2-standard-8"
    min_count    = 3
    max_count    = 12
  }
}

database_encryption_key = "projects/flightline-prod/locations/southamerica-west1/keyRings/flightline-prod-southamerica-west1-gke/cryptoKeys/secrets"
deletion_protection     = true
enable_keda             = true

kafka = {
  replicas           = 3
  replication_factor = 3
  min_insync         = 2
  storage_size       = "200Gi"
}

clickhouse = {
  storage_size = "500Gi"
  cpu          = "4"
  memory       = "16Gi"
}

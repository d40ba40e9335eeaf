# The values of iac/live for dev: terraform -chdir=iac/live plan|apply -var-file=../envs/dev/terraform.tfvars
#
# dev: small, zonal nodes on Spot VMs, public control plane endpoint restricted to the
# authorized networks, no KMS (Google's default encryption at rest), destroyable.
project_id  = "flightline-dev"
environment = "dev"
region      = "southamerica-west1"

node_locations  = ["southamerica-west1-a"]
release_channel = "REGULAR"

enable_private_endpoint = false
master_authorized_networks = [
  # Replace with the office/VPN range; CI reaches the API through it or through a self-hosted runner.
  { cidr_block = "203.0.113.0/24", display_name = "office-vpn" },
]

network = {
  subnet   = "10.10.0.0/20"
  pods     = "10.20.0.0/14"
  services = "10.24.0.0/20"
  master   = "172.16.0.0/28"
}

node_pools = {
  general = {
    machine_type = "e2-standard-4"
    min_count    = 1
    max_count    = 3
    spot         = true
  }
}

deletion_protection = false
enable_keda         = true

kafka = {
  replicas           = 1
  replication_factor = 1
  min_insync         = 1
  storage_size       = "20Gi"
  cpu                = "500m"
  memory             = "2Gi"
}

clickhouse = {
  storage_size = "20Gi"
  cpu          = "500m"
  memory       = "2Gi"
}

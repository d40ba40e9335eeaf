# State in GCS: a partial configuration (backends take no variables). Each environment's bucket and
# prefix come from envs/<env>/backend.gcs.tfbackend at init:
#   terraform -chdir=iac/live init -reconfigure -backend-config=../envs/<env>/backend.gcs.tfbackend
terraform {
  backend "gcs" {}
}

# Addresses before the repeated blocks were folded into for_each: Terraform moves the existing state
# instead of destroying and recreating (new passwords, reinstalled operators). Keep these until every
# environment has applied once with them.

moved {
  from = random_password.grafana_admin
  to   = random_password.this["grafana_admin"]
}

moved {
  from = random_password.clickhouse
  to   = random_password.this["clickhouse"]
}

moved {
  from = helm_release.strimzi
  to   = helm_release.operator["strimzi"]
}

moved {
  from = helm_release.clickhouse_operator
  to   = helm_release.operator["clickhouse"]
}

# A private, regional GKE Standard cluster for Flightline:
#   - its own VPC and subnetwork (VPC-native: secondary ranges for pods and Services), with Cloud NAT
#     for the private nodes' egress (image pulls from GHCR) and VPC flow logs;
#   - private nodes always; a private-only control plane endpoint optionally (enable_private_endpoint);
#     master authorized networks in both cases;
#   - GKE Dataplane V2 (ADVANCED_DATAPATH: eBPF, NetworkPolicy enforced without Calico);
#   - Workload Identity (pods get Google credentials through their KSA: no service-account keys);
#   - a release channel, shielded nodes (secure boot, integrity monitoring), COS containerd images;
#   - no default node pool: every pool is one of var.node_pools, autoscaled, auto-repaired and upgraded;
#   - the nodes run as a dedicated service account holding only roles/container.defaultNodeServiceAccount.
# No google_service_account_key anywhere: CI authenticates with Workload Identity Federation.

locals {
  workload_pool  = "${var.project_id}.svc.id.goog"
  network_tag    = "${var.names.cluster}-nodes"
  node_locations = length(var.node_locations) > 0 ? var.node_locations : null

  # The subnetwork's secondary ranges (VPC-native), by the names ip_allocation_policy refers to.
  secondary_ranges = {
    pods     = var.pods_cidr
    services = var.services_cidr
  }

  # Settings every node shares, the short-lived default pool's and var.node_pools': COS containerd
  # images, no legacy metadata endpoints, the cloud-platform scope (access is governed by the
  # service account's IAM roles; the scope only has to allow them).
  node_image_type   = "COS_CONTAINERD"
  node_oauth_scopes = ["https://www.googleapis.com/auth/cloud-platform"]
  node_metadata     = { disable-legacy-endpoints = "true" }
}

# ---- network -------------------------------------------------------------------------------------

resource "google_compute_network" "this" {
  project                 = var.project_id
  name                    = var.names.network
  auto_create_subnetworks = false
  routing_mode            = "REGIONAL"
}

resource "google_compute_subnetwork" "this" {
  project                  = var.project_id
  name                     = var.names.subnetwork
  region                   = var.region
  network                  = google_compute_network.this.id
  ip_cidr_range            = var.subnet_cidr
  private_ip_google_access = true

  dynamic "secondary_ip_range" {
    for_each = local.secondary_ranges
    content {
      range_name    = secondary_ip_range.key
      ip_cidr_range = secondary_ip_range.value
    }
  }

  log_config {
    aggregation_interval = "INTERVAL_5_MIN"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

resource "google_compute_router" "this" {
  project = var.project_id
  name    = var.names.router
  region  = var.region
  network = google_compute_network.this.id
}

resource "google_compute_router_nat" "this" {
  project                            = var.project_id
  name                               = var.names.nat
  region                             = var.region
  router                             = google_compute_router.this.name
  nat_ip_allocate_option             = "AUTO_ONLY"
  source_subnetwork_ip_ranges_to_nat = "LIST_OF_SUBNETWORKS"

  subnetwork {
    name                    = google_compute_subnetwork.this.self_link
    source_ip_ranges_to_nat = ["ALL_IP_RANGES"]
  }

  log_config {
    enable = true
    filter = "ERRORS_ONLY"
  }
}

# A private cluster's control plane reaches the nodes on 443 and 10250 only (GKE's own rule). The
# aggregated APIs and webhooks of the platform listen elsewhere: prometheus-adapter and KEDA's
# metrics server (custom/external metrics APIs, 6443), KEDA's admission webhook (9443) and
# kube-prometheus-stack's operator webhook (10250, already open; 8443 for other charts' webhooks).
resource "google_compute_firewall" "master_to_webhooks" {
  project     = var.project_id
  name        = "${var.names.network}-master-webhooks"
  network     = google_compute_network.this.id
  description = "Control plane to aggregated API servers and admission webhooks on the nodes of ${var.names.cluster}."
  direction   = "INGRESS"
  priority    = 1000

  source_ranges = [var.master_ipv4_cidr_block]
  target_tags   = [local.network_tag]

  allow {
    protocol = "tcp"
    ports    = ["6443", "8443", "9443"]
  }
}

# ---- the nodes' service account ------------------------------------------------------------------

resource "google_service_account" "nodes" {
  project      = var.project_id
  account_id   = var.names.node_service_account
  display_name = "GKE nodes of ${var.names.cluster}"
  description  = "Runs the nodes of ${var.names.cluster}: logs, metrics and resource metadata only. No keys: attached to the VMs."
}

resource "google_project_iam_member" "nodes" {
  for_each = toset(var.node_service_account_roles)

  project = var.project_id
  role    = each.value
  member  = "serviceAccount:${google_service_account.nodes.email}"
}

# ---- the cluster ---------------------------------------------------------------------------------

resource "google_container_cluster" "this" {
  #checkov:skip=CKV_GCP_24:PodSecurityPolicy was removed in Kubernetes 1.25 and GKE no longer offers it; Pod Security Admission (namespace labels) replaces it.
  #checkov:skip=CKV_GCP_12:NetworkPolicy is enforced by GKE Dataplane V2 (datapath_provider = ADVANCED_DATAPATH); the legacy network_policy (Calico) add-on cannot be enabled beside it.
  project  = var.project_id
  name     = var.names.cluster
  location = var.region

  node_locations = local.node_locations

  # Node pools are separate resources: the default one is removed right after creation. While it
  # exists it runs as the nodes' service account with the same hardening as the real pools (not as
  # the Compute Engine default service account).
  remove_default_node_pool = true
  initial_node_count       = 1

  node_config {
    service_account = google_service_account.nodes.email
    oauth_scopes    = local.node_oauth_scopes
    image_type      = local.node_image_type
    metadata        = local.node_metadata
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }
  }

  network         = google_compute_network.this.id
  subnetwork      = google_compute_subnetwork.this.id
  networking_mode = "VPC_NATIVE"

  ip_allocation_policy {
    cluster_secondary_range_name  = "pods"     # local.secondary_ranges
    services_secondary_range_name = "services" # local.secondary_ranges
  }

  # Dataplane V2 enforces NetworkPolicy itself (the legacy network_policy / Calico add-on must stay off).
  datapath_provider = "ADVANCED_DATAPATH"

  private_cluster_config {
    enable_private_nodes    = true
    enable_private_endpoint = var.enable_private_endpoint
    master_ipv4_cidr_block  = var.master_ipv4_cidr_block

    master_global_access_config {
      enabled = false
    }
  }

  master_authorized_networks_config {
    gcp_public_cidrs_access_enabled = false

    dynamic "cidr_blocks" {
      for_each = var.master_authorized_networks
      content {
        cidr_block   = cidr_blocks.value.cidr_block
        display_name = cidr_blocks.value.display_name
      }
    }
  }

  master_auth {
    client_certificate_config {
      issue_client_certificate = false
    }
  }

  workload_identity_config {
    workload_pool = local.workload_pool
  }

  release_channel {
    channel = var.release_channel
  }

  enable_shielded_nodes       = true
  enable_legacy_abac          = false
  enable_intranode_visibility = true

  binary_authorization {
    evaluation_mode = var.binary_authorization ? "PROJECT_SINGLETON_POLICY_ENFORCE" : "DISABLED"
  }

  database_encryption {
    state    = var.database_encryption_key == null ? "DECRYPTED" : "ENCRYPTED"
    key_name = var.database_encryption_key
  }

  dynamic "authenticator_groups_config" {
    for_each = var.rbac_security_group == null ? [] : [var.rbac_security_group]
    content {
      security_group = authenticator_groups_config.value
    }
  }

  addons_config {
    http_load_balancing {
      disabled = false
    }
    horizontal_pod_autoscaling {
      disabled = false
    }
    gce_persistent_disk_csi_driver_config {
      enabled = true
    }
  }

  logging_config {
    enable_components = ["SYSTEM_COMPONENTS", "WORKLOADS"]
  }

  # Application metrics go to the in-cluster kube-prometheus-stack (modules/platform).
  monitoring_config {
    enable_components = ["SYSTEM_COMPONENTS"]
    managed_prometheus {
      enabled = false
    }
  }

  security_posture_config {
    mode               = "BASIC"
    vulnerability_mode = "VULNERABILITY_BASIC"
  }

  maintenance_policy {
    recurring_window {
      start_time = "2024-01-06T03:00:00Z"
      end_time   = "2024-01-06T09:00:00Z"
      recurrence = "FREQ=WEEKLY;BYDAY=SA,SU"
    }
  }

  resource_labels     = var.labels
  deletion_protection = var.deletion_protection

  depends_on = [google_project_iam_member.nodes]

  lifecycle {
    # node_config describes the short-lived default pool only; after its removal the API reports
    # no node_config, which must not force a new cluster.
    ignore_changes = [node_config]
  }
}

resource "google_container_node_pool" "this" {
  for_each = var.node_pools

  project  = var.project_id
  name     = each.key
  location = var.region
  cluster  = google_container_cluster.this.name

  node_locations = local.node_locations

  autoscaling {
    total_min_node_count = each.value.min_count
    total_max_node_count = each.value.max_count
    location_policy      = each.value.spot ? "ANY" : "BALANCED"
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  upgrade_settings {
    max_surge       = 1
    max_unavailable = 0
  }

  node_config {
    machine_type    = each.value.machine_type
    disk_size_gb    = each.value.disk_size_gb
    disk_type       = each.value.disk_type
    image_type      = local.node_image_type
    spot            = each.value.spot
    service_account = google_service_account.nodes.email
    oauth_scopes    = local.node_oauth_scopes
    tags            = [local.network_tag]

    labels          = merge(each.value.labels, { "flightline.dev/node-pool" = each.key })
    resource_labels = var.labels
    metadata        = local.node_metadata

    workload_metadata_config {
      mode = "GKE_METADATA"
    }

    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }

    dynamic "taint" {
      for_each = each.value.taints
      content {
        key    = taint.value.key
        value  = taint.value.value
        effect = taint.value.effect
      }
    }
  }

  lifecycle {
    # The cluster autoscaler owns the node count.
    ignore_changes = [initial_node_count]
  }
}

# The cluster-side platform Flightline runs on, all from Helm charts and pinned:
#   kube-prometheus-stack     Prometheus (picks up every ServiceMonitor/PrometheusRule the Flightline
#                             operator creates), Alertmanager, Grafana (dashboard sidecar on the
#                             operator's `grafana_dashboard=1` ConfigMaps, folders from `grafana_folder`)
#   strimzi-kafka-operator    + a KRaft Kafka cluster (Kafka + KafkaNodePool, kubernetes_manifest)
#   altinity clickhouse-operator + a ClickHouseInstallation (kubernetes_manifest)
#   prometheus-adapter        the custom metrics API for Flightline's HPAs (charts/prometheus-adapter-values.yaml)
#   KEDA                      optional (enable_keda)
#   flightline                the repository's chart, wired to the Kafka bootstrap, ClickHouse and Prometheus URLs
#
# kubernetes_manifest resolves its CRD at plan time: on a new cluster apply once with
# create_custom_resources = false (installs the operators and their CRDs), then with true.

locals {
  ns = var.namespaces

  repo_root           = "${path.module}/../../.."
  adapter_values_file = coalesce(var.adapter_values_file, "${local.repo_root}/charts/prometheus-adapter-values.yaml")
  flightline_chart    = coalesce(var.flightline_chart_path, "${local.repo_root}/charts/flightline")

  prometheus_release = "kube-prometheus-stack"
  # kube-prometheus-stack names its Prometheus Service <release>-prometheus (fullnameOverride below).
  prometheus_url = "http://${local.prometheus_release}-prometheus.${local.ns.monitoring}.svc:9090"

  # Strimzi: <cluster>-kafka-bootstrap; PLAINTEXT listener (Flightline speaks PLAINTEXT only for now).
  kafka_bootstrap = "${var.kafka.name}-kafka-bootstrap.${local.ns.kafka}.svc:9092"

  # Altinity: Service clickhouse-<installation> in front of every replica; 8123 is the HTTP interface.
  clickhouse_url         = "http://clickhouse-${var.clickhouse.name}.${local.ns.clickhouse}.svc:8123"
  clickhouse_secret_name = "${var.clickhouse.name}-clickhouse-credentials"

  common_labels = {
    "app.kubernetes.io/part-of"    = "flightline-platform"
    "app.kubernetes.io/managed-by" = "terraform"
    "flightline.dev/environment"   = var.environment
  }
}

resource "kubernetes_namespace_v1" "this" {
  for_each = toset(compact([
    local.ns.monitoring, local.ns.kafka, local.ns.clickhouse, local.ns.flightline,
    var.enable_keda ? local.ns.keda : "",
  ]))

  metadata {
    name = each.value
    labels = merge(local.common_labels, {
      # Pod Security Admission: everything here runs as non-root without privileges, except
      # node-exporter (hostNetwork/hostPID/hostPath), which needs `privileged` in monitoring.
      "pod-security.kubernetes.io/enforce" = each.value == local.ns.monitoring ? "privileged" : "baseline"
      "pod-security.kubernetes.io/warn"    = "restricted"
    })
  }
}

# Generated passwords: Grafana's admin and the ClickHouse user Flightline connects as.
resource "random_password" "this" {
  for_each = toset(["grafana_admin", "clickhouse"])

  length  = 32
  special = false
}

# ---- monitoring ----------------------------------------------------------------------------------

resource "kubernetes_secret_v1" "grafana_admin" {
  metadata {
    name      = "grafana-admin"
    namespace = kubernetes_namespace_v1.this[local.ns.monitoring].metadata[0].name
    labels    = local.common_labels
  }
  data = {
    admin-user     = "admin"
    admin-password = random_password.this["grafana_admin"].result
  }
}

resource "helm_release" "kube_prometheus_stack" {
  name             = local.prometheus_release
  repository       = "https://prometheus-community.github.io/helm-charts"
  chart            = "kube-prometheus-stack"
  version          = var.chart_versions.kube_prometheus_stack
  namespace        = kubernetes_namespace_v1.this[local.ns.monitoring].metadata[0].name
  create_namespace = false
  atomic           = true
  cleanup_on_fail  = true
  timeout          = 900

  values = [yamlencode({
    fullnameOverride = local.prometheus_release
    prometheus = {
      prometheusSpec = {
        # Select every ServiceMonitor, PodMonitor and PrometheusRule in every namespace, not only
        # those labelled with this release: the Flightline operator creates them per pipeline.
        serviceMonitorSelectorNilUsesHelmValues = false
        podMonitorSelectorNilUsesHelmValues     = false
        ruleSelectorNilUsesHelmValues           = false
        probeSelectorNilUsesHelmValues          = false
        retention                               = var.prometheus_retention
        storageSpec = {
          volumeClaimTemplate = {
            spec = {
              accessModes = ["ReadWriteOnce"]
              resources   = { requests = { storage = var.prometheus_storage_size } }
            }
          }
        }
      }
    }
    grafana = {
      admin = {
        existingSecret = kubernetes_secret_v1.grafana_admin.metadata[0].name
        userKey        = "admin-user"
        passwordKey    = "admin-password"
      }
      sidecar = {
        dashboards = {
          enabled          = true
          label            = "grafana_dashboard"
          labelValue       = "1"
          searchNamespace  = "ALL"
          folderAnnotation = "grafana_folder"
          provider         = { foldersFromFilesStructure = true }
        }
      }
    }
  })]
}

resource "helm_release" "prometheus_adapter" {
  name             = "prometheus-adapter"
  repository       = "https://prometheus-community.github.io/helm-charts"
  chart            = "prometheus-adapter"
  version          = var.chart_versions.prometheus_adapter
  namespace        = kubernetes_namespace_v1.this[local.ns.monitoring].metadata[0].name
  create_namespace = false
  atomic           = true
  cleanup_on_fail  = true

  values = [
    file(local.adapter_values_file),
    yamlencode({
      prometheus = {
        url  = "http://${local.prometheus_release}-prometheus.${local.ns.monitoring}.svc"
        port = 9090
      }
    }),
  ]

  depends_on = [helm_release.kube_prometheus_stack]
}

resource "helm_release" "keda" {
  count = var.enable_keda ? 1 : 0

  name             = "keda"
  repository       = "https://kedacore.github.io/charts"
  chart            = "keda"
  version          = var.chart_versions.keda
  namespace        = kubernetes_namespace_v1.this[local.ns.keda].metadata[0].name
  create_namespace = false
  atomic           = true
  cleanup_on_fail  = true

  # KEDA serves external.metrics.k8s.io; prometheus-adapter serves only custom.metrics.k8s.io
  # (its values set no externalRules), so the two APIServices do not collide.
  depends_on = [helm_release.prometheus_adapter]
}

# ---- the Kafka and ClickHouse operators ----------------------------------------------------------

# Two charts of the same shape, each in the namespace of the resources it reconciles (below).
locals {
  operators = {
    strimzi = {
      name       = "strimzi-kafka-operator"
      repository = "https://strimzi.io/charts/"
      chart      = "strimzi-kafka-operator"
      version    = var.chart_versions.strimzi
      namespace  = local.ns.kafka
      values = [yamlencode({
        watchNamespaces       = []
        watchAnyNamespace     = false
        featureGates          = ""
        generateNetworkPolicy = true
      })]
    }
    clickhouse = {
      name       = "clickhouse-operator"
      repository = "https://docs.altinity.com/clickhouse-operator/"
      chart      = "altinity-clickhouse-operator"
      version    = var.chart_versions.clickhouse_operator
      namespace  = local.ns.clickhouse
      values     = []
    }
  }
}

resource "helm_release" "operator" {
  for_each = local.operators

  name             = each.value.name
  repository       = each.value.repository
  chart            = each.value.chart
  version          = each.value.version
  namespace        = kubernetes_namespace_v1.this[each.value.namespace].metadata[0].name
  create_namespace = false
  atomic           = true
  cleanup_on_fail  = true
  values           = each.value.values
}

# ---- Kafka (Strimzi, KRaft) ----------------------------------------------------------------------

resource "kubernetes_manifest" "kafka_node_pool" {
  count = var.create_custom_resources ? 1 : 0

  manifest = {
    apiVersion = "kafka.strimzi.io/v1beta2"
    kind       = "KafkaNodePool"
    metadata = {
      name      = "dual-role"
      namespace = local.ns.kafka
      labels    = merge(local.common_labels, { "strimzi.io/cluster" = var.kafka.name })
    }
    spec = {
      replicas = var.kafka.replicas
      roles    = ["controller", "broker"]
      storage = {
        type = "jbod"
        volumes = [{
          id            = 0
          type          = "persistent-claim"
          size          = var.kafka.storage_size
          deleteClaim   = false
          kraftMetadata = "shared"
        }]
      }
      resources = {
        requests = { cpu = var.kafka.cpu, memory = var.kafka.memory }
        limits   = { memory = var.kafka.memory }
      }
    }
  }

  depends_on = [helm_release.operator]
}

resource "kubernetes_manifest" "kafka" {
  count = var.create_custom_resources ? 1 : 0

  manifest = {
    apiVersion = "kafka.strimzi.io/v1beta2"
    kind       = "Kafka"
    metadata = {
      name      = var.kafka.name
      namespace = local.ns.kafka
      labels    = local.common_labels
      annotations = {
        "strimzi.io/node-pools" = "enabled"
        "strimzi.io/kraft"      = "enabled"
      }
    }
    spec = {
      kafka = {
        version = var.kafka.version
        listeners = [{
          name = "plain"
          port = 9092
          type = "internal"
          tls  = false
        }]
        config = {
          "offsets.topic.replication.factor"         = var.kafka.replication_factor
          "transaction.state.log.replication.factor" = var.kafka.replication_factor
          "transaction.state.log.min.isr"            = var.kafka.min_insync
          "default.replication.factor"               = var.kafka.replication_factor
          "min.insync.replicas"                      = var.kafka.min_insync
          # Flightline creates its topics itself (CreateTopics): no auto-creation.
          "auto.create.topics.enable" = false
        }
      }
    }
  }

  depends_on = [kubernetes_manifest.kafka_node_pool]
}

# ---- ClickHouse (Altinity operator) --------------------------------------------------------------

# The credentials of the ClickHouse user Flightline connects as. The same Secret shape serves a
# FlightPipeline's spec.clickhouse credentials Secret (copy it into the pipeline's namespace).
resource "kubernetes_secret_v1" "clickhouse" {
  metadata {
    name      = local.clickhouse_secret_name
    namespace = kubernetes_namespace_v1.this[local.ns.clickhouse].metadata[0].name
    labels    = local.common_labels
  }
  data = {
    username = var.clickhouse.user
    password = random_password.this["clickhouse"].result
  }
}

resource "kubernetes_manifest" "clickhouse_installation" {
  count = var.create_custom_resources ? 1 : 0

  manifest = {
    apiVersion = "clickhouse.altinity.com/v1"
    kind       = "ClickHouseInstallation"
    metadata = {
      name      = var.clickhouse.name
      namespace = local.ns.clickhouse
      labels    = local.common_labels
    }
    spec = {
      configuration = {
        users = {
          # The password comes from the Secret (the operator reads it; it is not in the CR).
          "${var.clickhouse.user}/k8s_secret_password" = "${local.clickhouse_secret_name}/password"
          "${var.clickhouse.user}/networks/ip"         = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
          "${var.clickhouse.user}/profile"             = "default"
          "${var.clickhouse.user}/quota"               = "default"
          "${var.clickhouse.user}/access_management"   = 0
        }
        clusters = [{
          name   = "flightline"
          layout = { shardsCount = 1, replicasCount = 1 }
        }]
      }
      defaults = {
        templates = {
          podTemplate             = "clickhouse"
          dataVolumeClaimTemplate = "data"
        }
      }
      templates = {
        podTemplates = [{
          name = "clickhouse"
          spec = {
            securityContext = { runAsUser = 101, runAsGroup = 101, fsGroup = 101 }
            containers = [{
              name  = "clickhouse"
              image = var.clickhouse.image
              resources = {
                requests = { cpu = var.clickhouse.cpu, memory = var.clickhouse.memory }
                limits   = { memory = var.clickhouse.memory }
              }
            }]
          }
        }]
        volumeClaimTemplates = [{
          name = "data"
          spec = {
            accessModes = ["ReadWriteOnce"]
            resources   = { requests = { storage = var.clickhouse.storage_size } }
          }
        }]
      }
    }
  }

  depends_on = [helm_release.operator, kubernetes_secret_v1.clickhouse]
}

# ---- Flightline ----------------------------------------------------------------------------------

resource "helm_release" "flightline" {
  name             = "flightline"
  chart            = local.flightline_chart
  namespace        = kubernetes_namespace_v1.this[local.ns.flightline].metadata[0].name
  create_namespace = false
  atomic           = true
  cleanup_on_fail  = true
  timeout          = 600

  # The operator's defaults for pipelines that name no Kafka/ClickHouse of their own, and the
  # Prometheus KEDA's triggers query. Keys: charts/flightline/values.yaml (its values.schema.json
  # rejects unknown ones, so a renamed key fails the apply instead of being ignored).
  values = [
    yamlencode(merge(
      {
        operator = {
          kafkaBootstrapServers = local.kafka_bootstrap
          clickhouseUrl         = local.clickhouse_url
          prometheusUrl         = local.prometheus_url
        }
        # kube-prometheus-stack above selects every ServiceMonitor/PrometheusRule: no extra labels.
        serviceMonitor = { enabled = true }
        prometheusRule = { enabled = true }
      },
      var.flightline_image_tag == null ? {} : {
        image = { tag = var.flightline_image_tag }
        pipelineImages = {
          ingest  = "ghcr.io/flightline/flightline-ingest:${var.flightline_image_tag}"
          query   = "ghcr.io/flightline/flightline-query:${var.flightline_image_tag}"
          predict = "ghcr.io/flightline/flightline-predict:${var.flightline_image_tag}"
        }
      },
    )),
    yamlencode(var.flightline_values),
  ]

  depends_on = [
    helm_release.kube_prometheus_stack,
    helm_release.prometheus_adapter,
    kubernetes_manifest.kafka,
    kubernetes_manifest.clickhouse_installation,
  ]
}

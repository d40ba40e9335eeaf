# Shared settings and helpers for the dev/ scripts (sourced, not executed).
#
# Two places hold state:
#   $FLIGHTLINE_CACHE  heavy, reusable builds: Kubernetes binaries, Kafka's jars, the chDB venv, cargo's
#                      target dir. Default /var/tmp/flightline, outside the clone, so fresh clones,
#                      CI and later sessions reuse them.
#   $STATE (.flightline/ at the repo root, git-ignored)  this checkout's running stack: certificates,
#                      etcd/Kafka/ClickHouse data, logs, PID files and the sourceable `env`.
# Every port is overridable from the environment.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEV="$REPO/dev"
FLIGHTLINE_CACHE="${FLIGHTLINE_CACHE:-/var/tmp/flightline}"
STATE="${FLIGHTLINE_STATE:-$REPO/.flightline}"
RUN="$STATE/run"
LOGS="$STATE/logs"
ENV_FILE="$STATE/env"

# Kubernetes control plane + kubelet and etcd, built from Go modules by dev/k8s/build.sh into a
# versioned directory (a version bump builds beside the old binaries; K8S_BIN overrides the directory).
K8S_VERSION="${K8S_VERSION:-1.35.4}"
ETCD_VERSION="${ETCD_VERSION:-3.6.16}"
K8S_BIN="${K8S_BIN:-$FLIGHTLINE_CACHE/k8s/v$K8S_VERSION/bin}"
# kubectl of the server's minor (dev/k8s/build.sh) before the machine's own, for every dev/ script.
case ":$PATH:" in *":$K8S_BIN:"*) ;; *) export PATH="$K8S_BIN:$PATH" ;; esac
# Apache Kafka's jars (dev/install kafka-apache): kafka_2.13 and its runtime dependencies from Maven
# Central in $KAFKA_APACHE_HOME/libs, with the log4j2 config the broker runs with.
KAFKA_APACHE_HOME="$FLIGHTLINE_CACHE/kafka-apache"
VENV="$FLIGHTLINE_CACHE/venv"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$FLIGHTLINE_CACHE/target}"
OPERATOR_BIN="$CARGO_TARGET_DIR/debug/flightline-operator"

# Monitoring (dev/install monitoring): Prometheus 3 and its promtool from the Go module
# github.com/prometheus/prometheus (its tag v0.3XX.Y is Prometheus 3.XX.Y) and prometheus-adapter
# from sigs.k8s.io/prometheus-adapter, built into versioned directories (a version bump builds
# beside the old binaries); Alertmanager and amtool from Debian's packages. Each binary is
# overridable (a Prometheus must have kubernetes_sd_configs, which Debian's 2.42 lacks).
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-3.16.0}"
PROMETHEUS_ADAPTER_VERSION="${PROMETHEUS_ADAPTER_VERSION:-0.12.0}"
MONITORING_HOME="$FLIGHTLINE_CACHE/monitoring"
# prometheus-operator's and KEDA's own CRDs (dev/install crds), from their Go modules.
PROMETHEUS_OPERATOR_VERSION="${PROMETHEUS_OPERATOR_VERSION:-0.85.0}"
KEDA_VERSION="${KEDA_VERSION:-2.21.0}"
THIRD_PARTY_CRDS="$FLIGHTLINE_CACHE/crds"
PROMETHEUS_BIN="${PROMETHEUS_BIN:-$MONITORING_HOME/prometheus-v$PROMETHEUS_VERSION/bin/prometheus}"
PROMTOOL_BIN="${PROMTOOL_BIN:-$MONITORING_HOME/prometheus-v$PROMETHEUS_VERSION/bin/promtool}"
PROMETHEUS_ADAPTER_BIN="${PROMETHEUS_ADAPTER_BIN:-$MONITORING_HOME/prometheus-adapter-v$PROMETHEUS_ADAPTER_VERSION/bin/adapter}"
ALERTMANAGER_BIN="${ALERTMANAGER_BIN:-/usr/bin/prometheus-alertmanager}"
AMTOOL_BIN="${AMTOOL_BIN:-/usr/bin/amtool}"

KAFKA_APACHE_VERSION="${KAFKA_APACHE_VERSION:-4.4.0}"
CHDB_CORE_VERSION=26.9.0

HOST=127.0.0.1
API_PORT="${API_PORT:-16443}"
KCM_PORT="${KCM_PORT:-16444}"
SCHED_PORT="${SCHED_PORT:-16445}"
ETCD_PORT="${ETCD_PORT:-12379}"
ETCD_PEER_PORT="${ETCD_PEER_PORT:-12380}"
KAFKA_PORT="${KAFKA_PORT:-19092}"
# Apache Kafka's KRaft controller listener; +1 would be Alertmanager's 19093.
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 2))}"
CH_PORT="${CH_PORT:-18123}"
# TLS ports of the same Kafka broker and ClickHouse front end (CA and certificates from dev/stack gen_service_tls)
KAFKA_SASL_SSL_PORT="${KAFKA_SASL_SSL_PORT:-$((KAFKA_PORT + 3))}"
CH_HTTPS_PORT="${CH_HTTPS_PORT:-$((CH_PORT + 320))}"
OPERATOR_METRICS_PORT="${OPERATOR_METRICS_PORT:-18080}"
PROM_PORT="${PROM_PORT:-19090}"
AM_PORT="${AM_PORT:-19093}"
# prometheus-adapter's HTTPS port (the custom.metrics.k8s.io APIService)
ADAPTER_PORT="${ADAPTER_PORT:-16446}"
# Where pods run: `real` = dev/k8s/node.sh (kubelet + containerd, pods in network namespaces on the
# bridge POD_BRIDGE), `process` = dev/k8s/node.py (pods as host processes on 127.0.1.N).
FLIGHTLINE_NODE="${FLIGHTLINE_NODE:-real}"
POD_BRIDGE="${POD_BRIDGE:-flightline0}"
POD_CIDR="${POD_CIDR:-10.88.0.0/16}"
POD_GATEWAY="${POD_GATEWAY:-${POD_CIDR%.0/*}.1}"   # the host's address on the bridge: 10.88.0.1
# The address Kafka and ClickHouse listen on and advertise, and that the operator and the pods are
# given: pods in their own network namespaces reach the host only at POD_GATEWAY (their 127.0.0.1 is
# their own); the host reaches it too. With process pods, loopback.
if [ "$FLIGHTLINE_NODE" = real ]; then SERVICE_HOST="${SERVICE_HOST:-$POD_GATEWAY}"; else SERVICE_HOST="${SERVICE_HOST:-$HOST}"; fi
KUBECONFIG_FILE="$STATE/k8s/kubeconfig"

log() { printf '[%s %s] %s\n' "$(basename "$0")" "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# port_free PORT: nothing listens on 127.0.0.1:PORT
port_free() { ! (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# spawn NAME CMD... : start detached, record "pid tag"; the tag (SPAWN_TAG, default the command)
# must appear in the process's command line for stop/alive to touch it (guards against PID reuse)
spawn() {
  local name=$1; shift
  mkdir -p "$RUN" "$LOGS"
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo "$! ${SPAWN_TAG:-$1}" >"$RUN/$name.pid"
}

# alive NAME: the recorded PID is running and is still the command we started
alive() {
  local f="$RUN/$1.pid" pid tag
  [ -f "$f" ] || return 1
  read -r pid tag <"$f" || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$tag"
}

# stop NAME: SIGTERM the recorded process (only if it is still ours), SIGKILL after 15 s
stop() {
  local name=$1 pid
  if alive "$name"; then
    read -r pid _ <"$RUN/$name.pid"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then log "$name ignored SIGTERM; killing"; kill -KILL "$pid" 2>/dev/null || true; fi
    log "stopped $name (pid $pid)"
  fi
  rm -f "$RUN/$name.pid"
}

# wait_until SECONDS DESCRIPTION CMD... : poll CMD every 0.3 s
wait_until() {
  local timeout=$1 what=$2; shift 2
  local end=$(( $(date +%s) + timeout ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || return 1
    sleep 0.3
  done
}

kubectl_() { kubectl --kubeconfig="$KUBECONFIG_FILE" "$@"; }

# wait_established CRD...: waits (60 s each) until each CRD is Established. Not `kubectl wait
# --for=condition=Established`: it fails at once ("accessor error: <nil> is of the type <nil>")
# when it reads a CRD whose status has no conditions yet, as a CRD just applied may.
crd_established() {
  [ "$(kubectl_ get "crd/$1" -o 'jsonpath={.status.conditions[?(@.type=="Established")].status}')" = True ]
}
wait_established() {
  local crd
  for crd in "$@"; do wait_until 60 "crd/$crd Established" crd_established "$crd" || return 1; done
}

# apt_install PKG... : installs the missing ones (needs root, as on these machines)
apt_install() {
  local missing=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  mkdir -p "$LOGS"
  if ! apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}" >"$LOGS/apt.log" 2>&1; then
    apt-get -o DPkg::Lock::Timeout=600 update -q >>"$LOGS/apt.log" 2>&1
    apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}" >>"$LOGS/apt.log" 2>&1 \
      || { tail -20 "$LOGS/apt.log" >&2; die "apt-get install ${missing[*]} failed"; }
  fi
}

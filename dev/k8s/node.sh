#!/usr/bin/env bash
# dev/k8s/node.sh - a REAL node for the local stack: the kubelet built with the control plane
# ($K8S_BIN/kubelet), Debian's containerd 1.6 and runc, and a CNI bridge, so that the operator's
# Deployments run as containers from the images dev/images builds, each pod in its own network
# namespace with an address of the pod network. (dev/k8s/node.py is the stand-in that runs pods as
# host processes instead.) Driven by dev/stack start-node|stop-node and dev/install node.
#
#   node.sh install   Debian's containerd, runc, containernetworking-plugins, buildah (apt)
#   node.sh start     bridge -> containerd -> images -> kubelet; waits until the node is Ready
#   node.sh stop      kubelet, pods, containerd; removes the bridge, the pods' network namespaces
#                     (they live in the node's private mount namespace) and the node's cgroups
#   node.sh status    one line per process
#   node.sh images    rebuilds the images if the workspace's binaries changed, imports them again
#   node.sh check     containerd + runc run the predict image (ctr run, host network): a prediction
#
# Network: the stack creates the bridge $POD_BRIDGE (default flightline0) with $POD_GATEWAY/16
# (10.88.0.1) on it; the CNI `bridge` plugin (isGateway false, ipMasq false: it neither adds an
# address nor iptables rules nor turns on ip_forward) plugs each pod's veth into it and `host-local`
# gives it an address of $POD_CIDR (10.88.0.0/16). Pods get no default route: they reach each other
# and the host's $POD_GATEWAY, nothing else (no NAT, no forwarding). The host reaches every pod IP
# through the bridge. No kube-proxy, no CNI portmap (no pod uses hostPort): no iptables rule is added.
# Services in pods reach Kafka and ClickHouse only if those listen on $POD_GATEWAY.
#
# Isolation from the machine: containerd and the kubelet run in one private mount namespace in which
# /run is an empty tmpfs (containerd's shim sockets and the pods' netns mounts, so both vanish with
# the node), and /var/log and /var/lib/cni (paths the kubelet and libcni hard-code) are directories
# of $NODE_STATE. Root, state, socket and config of containerd, the kubelet's root dir, the CNI
# config and IPAM data are all under $NODE_STATE ($STATE/node); pods' cgroups under $NODE_CGROUP.
# The kubelet serves on 127.0.0.1:$KUBELET_PORT only; the node is named `localhost` so that the
# apiserver (which prefers the Hostname address) reaches it there for logs and exec.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

NODE_STATE="$STATE/node"
K8S_VERSION="${K8S_VERSION:-1.35.4}"   # the kubelet's (lib.sh sets it with the control plane's)
NODE_NAME="${NODE_NAME:-localhost}"
POD_BRIDGE="${POD_BRIDGE:-flightline0}"
POD_CIDR="${POD_CIDR:-10.88.0.0/16}"
POD_GATEWAY="${POD_GATEWAY:-${POD_CIDR%.0/*}.1}"   # 10.88.0.0/16 -> 10.88.0.1
KUBELET_PORT="${KUBELET_PORT:-16450}"
KUBELET_HEALTHZ_PORT="${KUBELET_HEALTHZ_PORT:-16451}"
CRI_STREAM_PORT="${CRI_STREAM_PORT:-16452}"
CNI_BIN_DIR="${CNI_BIN_DIR:-/usr/lib/cni}"
CONTAINERD_BIN="${CONTAINERD_BIN:-/usr/bin/containerd}"
RUNC_BIN="${RUNC_BIN:-/usr/sbin/runc}"
CTR_BIN="${CTR_BIN:-/usr/bin/ctr}"
SOCK="$NODE_STATE/containerd.sock"
# One cgroup parent per stack (named after its state dir), so stop removes exactly this node's.
NODE_CGROUP="/flightline-node-$(printf %s "$STATE" | sha256sum | cut -c1-8)"
PAUSE_VERSION=3.10.1   # build/pause/Makefile's TAG in k8s.io/kubernetes v1.35
PAUSE_IMAGE="localhost/flightline-pause:$PAUSE_VERSION"
BUILDAH=(buildah --storage-driver "${STORAGE_DRIVER:-vfs}")
# The services' images (dev/images); the operator runs on the host, so not its image.
read -r -a IMAGE_COMPONENTS <<<"${NODE_IMAGES:-ingest query predict}"
WORKSPACE_VERSION=$(sed -n '/^\[workspace\.package\]/,/^\[/ s/^version *= *"\([^"]*\)".*/\1/p' "$REPO/Cargo.toml")
ctr_() { "$CTR_BIN" -a "$SOCK" -n k8s.io "$@"; }

# ------------------------------------------------------------------------------ install
do_install() {
  local t; t=$(date +%s)
  apt_install containerd runc containernetworking-plugins buildah iproute2 gcc libc6-dev
  # Debian starts no containerd here (no systemd; the package's unit is not ours to run anyway).
  [ -x "$CONTAINERD_BIN" ] && [ -x "$RUNC_BIN" ] && [ -x "$CNI_BIN_DIR/bridge" ] && [ -x "$CNI_BIN_DIR/host-local" ] \
    || die "containerd, runc or the CNI plugins are missing after apt-get install"
  log "node: $("$CONTAINERD_BIN" --version | awk '{print "containerd", $3}'), $("$RUNC_BIN" --version | head -1)," \
    "CNI plugins $(dpkg-query -W -f '${Version}' containernetworking-plugins), $("${BUILDAH[@]}" --version | cut -d' ' -f1-3) in $(( $(date +%s) - t ))s"
  [ -x "$K8S_BIN/kubelet" ] || log "node: no kubelet in $K8S_BIN yet (dev/install k8s builds it)"
}

# ------------------------------------------------------------------------------ images
# The pause image (each pod's sandbox), built here from pause.c of the kubernetes module the kubelet
# was built from: a static binary in a FROM-scratch image, named exactly as containerd's sandbox_image.
build_pause_image() {
  if "${BUILDAH[@]}" inspect --type image "$PAUSE_IMAGE" >/dev/null 2>&1; then return; fi
  local src work ctr
  src="$(go env GOMODCACHE 2>/dev/null || echo "$HOME/go/pkg/mod")/k8s.io/kubernetes@v$K8S_VERSION/build/pause/linux/pause.c"
  [ -f "$src" ] || die "no $src (dev/install k8s downloads the kubernetes module)"
  work=$(mktemp -d)
  gcc -Os -static -DVERSION="$PAUSE_VERSION" -o "$work/pause" "$src" && strip "$work/pause"
  ctr=$("${BUILDAH[@]}" from scratch)
  "${BUILDAH[@]}" copy "$ctr" "$work/pause" /pause >/dev/null
  "${BUILDAH[@]}" config --entrypoint '["/pause"]' --user 65535:65535 --created-by "dev/k8s/node.sh" "$ctr"
  "${BUILDAH[@]}" commit -q --rm "$ctr" "$PAUSE_IMAGE" >/dev/null
  rm -rf "$work"
  log "node: built $PAUSE_IMAGE from $(basename "$src") of kubernetes v$K8S_VERSION"
}

# image_archives: docker-archive tarballs of the pause image and the services' images in
# $NODE_STATE/images, written again only when buildah's image ID changed. Prints their paths.
image_archives() {
  local image name id archive
  mkdir -p "$NODE_STATE/images"
  build_pause_image
  for image in "$PAUSE_IMAGE" $(for c in "${IMAGE_COMPONENTS[@]}"; do echo "localhost/flightline-$c:$WORKSPACE_VERSION"; done); do
    id=$("${BUILDAH[@]}" inspect --type image --format '{{.FromImageID}}' "$image" 2>/dev/null) \
      || die "no image $image in buildah's storage: run dev/images"
    name=${image#localhost/}; archive="$NODE_STATE/images/${name//:/-}.tar"
    if [ "$(cat "$archive.id" 2>/dev/null)" != "$id" ] || [ ! -s "$archive" ]; then
      rm -f "$archive"
      # the name in the destination is kept in the archive's manifest, so ctr imports it by name
      "${BUILDAH[@]}" push -q "$image" "docker-archive:$archive:$image" >/dev/null
      echo "$id" >"$archive.id"
    fi
    touch "$archive"   # it is the image of the current binaries (refresh_images compares against it)
    echo "$archive"
  done
}

# refresh_images: the services' images are built (dev/images) from the workspace's binaries of
# NODE_IMAGES_PROFILE (default debug: those `cargo build --workspace` and the tests keep current, as
# node.py ran them) whenever a binary is newer than the archive last imported, or there is none.
# Returns 0 when it rebuilt them.
NODE_IMAGES_PROFILE="${NODE_IMAGES_PROFILE:-debug}"
refresh_images() {
  local c bin archive stale=()
  for c in "${IMAGE_COMPONENTS[@]}"; do
    bin="$CARGO_TARGET_DIR/$NODE_IMAGES_PROFILE/flightline-$c"
    archive="$NODE_STATE/images/flightline-$c-$WORKSPACE_VERSION.tar"
    if [ ! -s "$archive" ] || [ ! -e "$bin" ] || [ "$bin" -nt "$archive" ]; then stale+=("$c"); fi
  done
  [ ${#stale[@]} -gt 0 ] || return 1
  log "node: building the images from $NODE_IMAGES_PROFILE binaries (new or changed: ${stale[*]}): dev/images"
  IMAGES_PROFILE="$NODE_IMAGES_PROFILE" "$DEV/images" >"$LOGS/images.log" 2>&1 || { tail -20 "$LOGS/images.log" >&2; die "dev/images failed"; }
  return 0
}

# import_images: every archive into containerd's k8s.io namespace (the CRI plugin's). The services'
# images are also tagged with the names the operator uses by default (ghcr.io/flightline/...:VERSION),
# as `kind load` would: the Deployments say imagePullPolicy IfNotPresent, so nothing is pulled.
import_images() {
  local a c t; t=$(date +%s%N)
  for a in $(image_archives); do ctr_ images import "$a" >/dev/null || die "ctr images import $a failed"; done
  for c in "${IMAGE_COMPONENTS[@]}"; do
    ctr_ images tag --force "localhost/flightline-$c:$WORKSPACE_VERSION" "ghcr.io/flightline/flightline-$c:$WORKSPACE_VERSION" >/dev/null
  done
  log "node: images imported in $(( ($(date +%s%N) - t) / 1000000 )) ms: $(ctr_ images ls -q | grep -v '^sha256:' | tr '\n' ' ')"
}

# ------------------------------------------------------------------------------ configs
write_runtime_configs() {
  mkdir -p "$NODE_STATE"/{containerd/root,containerd/state,kubelet,cni/net.d,cni/ipam,cni/cache,log,pki}
  cat >"$NODE_STATE/containerd.toml" <<EOF
# Generated by dev/k8s/node.sh at every start: edits are overwritten.
version = 2
root = "$NODE_STATE/containerd/root"
state = "$NODE_STATE/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri.aufs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  level = "info"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  stream_server_port = "$CRI_STREAM_PORT"
  enable_selinux = false
  # no CAP_SYS_RESOURCE in this VM: never ask for an oom_score_adj below containerd's own
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$RUNC_BIN"
        Root = "$NODE_STATE/containerd/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$NODE_STATE/cni/net.d"
    max_conf_num = 1
EOF
  # bridge: the stack's bridge, no address of its own (isGateway false), no masquerading; host-local
  # IPAM keeps its leases under $NODE_STATE. (containerd adds the pods' loopback itself.)
  cat >"$NODE_STATE/cni/net.d/10-flightline.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "flightline-pods",
  "plugins": [
    {"type": "bridge", "bridge": "$POD_BRIDGE", "isGateway": false, "isDefaultGateway": false, "ipMasq": false,
     "hairpinMode": false,
     "ipam": {"type": "host-local", "dataDir": "$NODE_STATE/cni/ipam",
              "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GATEWAY"}]], "routes": []}}
  ]
}
EOF
}

write_kubelet_configs() {
  local pki="$STATE/k8s/pki" f
  # The kubelet's client certificate: CN system:node:<name>, O system:nodes (the Node authorizer and
  # NodeRestriction admit it), signed by the cluster CA dev/stack made.
  [ -s "$pki/ca.key" ] || die "no cluster CA in $pki: start Kubernetes first (dev/stack start)"
  if [ ! -s "$NODE_STATE/pki/kubelet-client.crt" ] || ! openssl verify -CAfile "$pki/ca.crt" "$NODE_STATE/pki/kubelet-client.crt" >/dev/null 2>&1 \
     || ! openssl x509 -in "$NODE_STATE/pki/kubelet-client.crt" -noout -subject | grep "system:node:$NODE_NAME\$" >/dev/null; then
    ( umask 077; cd "$NODE_STATE/pki"
      openssl ecparam -name prime256v1 -genkey -noout -out kubelet-client.key 2>/dev/null
      openssl req -new -key kubelet-client.key -subj "/O=system:nodes/CN=system:node:$NODE_NAME" -out kubelet-client.csr 2>/dev/null
      printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=clientAuth" >client.ext
      openssl x509 -req -in kubelet-client.csr -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 3650 -sha256 \
        -extfile client.ext -out kubelet-client.crt 2>/dev/null
      rm -f kubelet-client.csr client.ext )
  fi
  f="$NODE_STATE/kubelet.kubeconfig"; rm -f "$f"
  kubectl config --kubeconfig="$f" set-cluster local --server="https://$HOST:$API_PORT" --certificate-authority="$pki/ca.crt" --embed-certs=true >/dev/null
  kubectl config --kubeconfig="$f" set-credentials kubelet --client-certificate="$NODE_STATE/pki/kubelet-client.crt" \
    --client-key="$NODE_STATE/pki/kubelet-client.key" --embed-certs=true >/dev/null
  kubectl config --kubeconfig="$f" set-context local --cluster=local --user=kubelet >/dev/null
  kubectl config --kubeconfig="$f" use-context local >/dev/null
  chmod 600 "$f"
  cat >"$NODE_STATE/kubelet.yaml" <<EOF
# Generated by dev/k8s/node.sh at every start: edits are overwritten.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$pki/ca.crt"}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$SOCK
# This machine mounts cgroup v1 (a tmpfs at /sys/fs/cgroup); 1.35 refuses it unless told not to.
failCgroupV1: false
cgroupDriver: cgroupfs
# No QoS cgroup tree: pods' cgroups go straight under cgroupRoot, which the stack creates and removes.
cgroupsPerQOS: false
cgroupRoot: $NODE_CGROUP
enforceNodeAllocatable: []
failSwapOn: false
# No iptables chains of the kubelet's (no kube-proxy either).
makeIPTablesUtilChains: false
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
# Nothing is pulled (no registry): never garbage-collect the imported images, and evict only when
# the machine is really short.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
serializeImagePulls: false
registerNode: true
rotateCertificates: false
serverTLSBootstrap: false
nodeStatusUpdateFrequency: 10s
syncFrequency: 10s
fileCheckFrequency: 0s
maxPods: 110
EOF
}

# ------------------------------------------------------------------------------ network
# ip_addrs [DEV]: the IPv4 addresses, one interface a line. ip's netlink dump fails when interfaces
# change meanwhile (another node's pod veths): its output counts, read again until it succeeds.
ip_addrs() {
  local out _
  for _ in 1 2 3 4 5; do
    if out=$(ip -4 -o addr show ${1:+dev "$1"} 2>/dev/null); then printf '%s\n' "$out"; return 0; fi
    sleep 0.2
  done
  printf '%s\n' "$out"
}
bridge_up() {
  if ip link show "$POD_BRIDGE" >/dev/null 2>&1; then
    [[ "$(ip_addrs "$POD_BRIDGE")" == *"inet $POD_GATEWAY/"* ]] \
      || die "an interface $POD_BRIDGE exists without $POD_GATEWAY: not this stack's (set POD_BRIDGE/POD_CIDR)"
  else
    # another interface in the pod range would make the routes ambiguous
    ! ip_addrs | grep -v " $POD_BRIDGE " | grep "inet ${POD_CIDR%.0.0/*}\." >/dev/null \
      || die "another interface already has an address in $POD_CIDR (set POD_CIDR)"
    ip link add "$POD_BRIDGE" type bridge
    ip addr add "$POD_GATEWAY/${POD_CIDR#*/}" dev "$POD_BRIDGE"
    ip link set "$POD_BRIDGE" up
    log "node: bridge $POD_BRIDGE $POD_GATEWAY/${POD_CIDR#*/} created"
  fi
}

bridge_down() {
  if ip link show "$POD_BRIDGE" >/dev/null 2>&1 && [[ "$(ip_addrs "$POD_BRIDGE")" == *"inet $POD_GATEWAY/"* ]]; then
    ip link delete "$POD_BRIDGE" && log "node: bridge $POD_BRIDGE deleted"
  fi
}

cgroups_up() {
  local c
  for c in /sys/fs/cgroup/*/; do
    [ -e "$c/cgroup.procs" ] || continue
    mkdir -p "$c${NODE_CGROUP#/}"
  done
}

cgroups_down() { # depth first; only empty cgroups can go, so a pod process still running keeps its own
  local c
  for c in /sys/fs/cgroup/*/"${NODE_CGROUP#/}"; do
    [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  return 0
}

# ------------------------------------------------------------------------------ the namespace
# Runs inside `unshare --mount --propagation private`: private mounts, containerd in the background,
# the images, then exec the kubelet (the pid dev/stack recorded becomes the kubelet's).
in_namespace() {
  mount -t tmpfs -o mode=755 flightline-node-run /run
  mkdir -p /run/netns /var/lib/cni
  mount --bind "$NODE_STATE/log" /var/log
  mount --bind "$NODE_STATE/cni/cache" /var/lib/cni
  setsid "$CONTAINERD_BIN" --config "$NODE_STATE/containerd.toml" >>"$LOGS/containerd.log" 2>&1 </dev/null &
  echo "$! $NODE_STATE/containerd.toml" >"$RUN/containerd.pid"
  local i
  for i in $(seq 1 100); do ctr_ version >/dev/null 2>&1 && break; sleep 0.1; done
  ctr_ version >/dev/null 2>&1 || { echo "containerd did not answer on $SOCK" >&2; exit 1; }
  echo "containerd up $(date +%T)"
  if [ "${NODE_CONTAINERD_ONLY:-0}" = 1 ]; then wait; exit; fi
  exec "$K8S_BIN/kubelet" --config="$NODE_STATE/kubelet.yaml" --kubeconfig="$NODE_STATE/kubelet.kubeconfig" \
    --hostname-override="$NODE_NAME" --node-ip="$POD_GATEWAY" --root-dir="$NODE_STATE/kubelet" \
    --cert-dir="$NODE_STATE/kubelet/pki" --node-labels=flightline.dev/real-node=true --v=1
}

node_ready() {
  [ "$(kubectl_ get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
# node_ready_since EPOCH: Ready, and this kubelet is the one reporting: its healthz answers and it
# renewed the node's Lease at or after EPOCH. (A Node object left by the last run still says Ready
# for up to 40 s after its kubelet stopped, and the kubelet rewrites an unchanged status only every
# 5 minutes, so the condition's heartbeat time says nothing.)
node_ready_since() {
  local renew
  node_ready || return 1
  [ "$(curl -s --max-time 2 "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz" 2>/dev/null)" = ok ] || return 1
  renew=$(kubectl_ -n kube-node-lease get lease "$NODE_NAME" -o jsonpath='{.spec.renewTime}' 2>/dev/null) || return 1
  [ -n "$renew" ] && [ "$(date -d "$renew" +%s)" -ge "$1" ]
}

do_start() {
  local t0 t1; t0=$(date +%s%N)
  if alive kubelet && alive containerd && node_ready; then
    if refresh_images; then import_images; fi
    log "node: already running"; return
  fi
  [ "${NODE_CONTAINERD_ONLY:-0}" = 1 ] || [ -x "$K8S_BIN/kubelet" ] || die "no kubelet in $K8S_BIN: run dev/install k8s"
  [ -x "$CONTAINERD_BIN" ] && [ -x "$RUNC_BIN" ] && [ -x "$CNI_BIN_DIR/bridge" ] || die "containerd/runc/CNI missing: run dev/install node"
  [ -e /dev/kmsg ] || die "no /dev/kmsg: the kubelet's OOM watcher needs it"
  [ "${NODE_CONTAINERD_ONLY:-0}" = 1 ] || [ "$(kubectl_ get --raw /readyz 2>/dev/null)" = ok ] \
    || die "the apiserver is not ready: dev/stack start first"
  alive kubelet && die "a kubelet of this stack runs but the node is not Ready (dev/stack stop-node first)"
  for p in "$KUBELET_PORT" "$KUBELET_HEALTHZ_PORT" "$CRI_STREAM_PORT"; do
    port_free "$p" || die "port $p is taken (override KUBELET_PORT, KUBELET_HEALTHZ_PORT, CRI_STREAM_PORT)"
  done
  [ ! -S "$SOCK" ] || ! "$CTR_BIN" -a "$SOCK" version >/dev/null 2>&1 || die "a containerd already answers on $SOCK"
  rm -f "$SOCK" "$SOCK.ttrpc"
  mkdir -p "$RUN" "$LOGS"
  bridge_up
  cgroups_up
  write_runtime_configs
  [ "${NODE_CONTAINERD_ONLY:-0}" = 1 ] || write_kubelet_configs
  log "node: starting containerd $("$CONTAINERD_BIN" --version | awk '{print $3}') and kubelet $("$K8S_BIN/kubelet" --version 2>/dev/null | awk '{print $2}') (node $NODE_NAME, pods $POD_CIDR on $POD_BRIDGE; logs $LOGS/{containerd,kubelet}.log)"
  SPAWN_TAG="$NODE_STATE/kubelet.yaml" spawn kubelet unshare --mount --propagation private \
    env NODE_CONTAINERD_ONLY="${NODE_CONTAINERD_ONLY:-0}" bash "$DEV/k8s/node.sh" _ns "$NODE_STATE/kubelet.yaml"
  # containerd first: then the images, before the kubelet would try to run any pod
  wait_until 30 containerd "$CTR_BIN" -a "$SOCK" version || { tail -20 "$LOGS/containerd.log" >&2; die "containerd did not start"; }
  refresh_images || true
  import_images
  [ "${NODE_CONTAINERD_ONLY:-0}" = 1 ] && { log "node: containerd only (NODE_CONTAINERD_ONLY=1)"; return; }
  wait_until 120 "node Ready" node_ready_since "$(( t0 / 1000000000 ))" || { tail -30 "$LOGS/kubelet.log" >&2; die "node $NODE_NAME not Ready after 120s"; }
  t1=$(date +%s%N)
  log "node: $NODE_NAME Ready in $(( (t1 - t0) / 1000000 )) ms ($(kubectl_ get node "$NODE_NAME" \
    -o jsonpath='{.status.nodeInfo.kubeletVersion}, {.status.nodeInfo.containerRuntimeVersion}'))"
}

# PIDs of everything containerd started for this node: the shims of our socket (found by the socket
# path in their command line, never by a program name) and all their descendants, children first.
node_procs() {
  python3 - "$SOCK" <<'PY'
import os, sys
sock = sys.argv[1]; kids = {}; roots = []
for p in os.listdir("/proc"):
    if not p.isdigit(): continue
    try:
        cmd = open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")
        ppid = int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
    except OSError: continue
    kids.setdefault(ppid, []).append(int(p))
    if cmd and cmd[0].endswith(b"containerd-shim-runc-v2") and sock.encode() in cmd: roots.append(int(p))
out, todo = [], list(roots)
while todo:
    p = todo.pop(); out.append(p); todo += kids.get(p, [])
print(" ".join(map(str, reversed(out))))
PY
}

do_stop() {
  local pids
  stop kubelet   # pods keep running without it; they go next
  pids=$(node_procs)
  if [ -n "$pids" ]; then
    # a grace period for the services' own shutdown, then the rest
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 1 30); do [ -z "$(node_procs)" ] && break; sleep 0.2; kill -0 $pids 2>/dev/null || break; done
    pids=$(node_procs); [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
    log "node: stopped the pods' processes and shims"
  fi
  # containerd 1.6 stops its CRI service at once on SIGTERM but then may hang in its gRPC shutdown:
  # wait 5 s, not lib.sh's 15 s, before SIGKILL (its state is on disk; nothing is lost).
  if alive containerd; then
    local pid; read -r pid _ <"$RUN/containerd.pid"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    log "node: stopped containerd (pid $pid)"
  fi
  rm -f "$RUN/containerd.pid"
  pids=$(node_procs); [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
  # The private mount namespace (and with it /run/netns and the pods' network namespaces, whose
  # veths leave the bridge with them) is gone once its last process is.
  bridge_down
  cgroups_down
  # host-local's leases of pods that no longer exist
  rm -rf "$NODE_STATE/cni/ipam" "$NODE_STATE/cni/cache"
  rm -f "$SOCK" "$SOCK.ttrpc"
}

# check: containerd + runc run the predict image as its own user (ctr run, host network, a free
# loopback port): GET /healthz and a prediction. Needs a running containerd (start or
# NODE_CONTAINERD_ONLY=1 start).
do_check() {
  local image="localhost/flightline-predict:$WORKSPACE_VERSION" id port pid t out
  "$CTR_BIN" -a "$SOCK" version >/dev/null 2>&1 || die "no containerd on $SOCK: dev/stack start-node first"
  read -r pid _ <"$RUN/containerd.pid"
  id="flightline-check-$$"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  t=$(date +%s%N)
  # in the node's mount namespace, where containerd mounts the snapshots
  nsenter -t "$pid" -m "$CTR_BIN" -a "$SOCK" -n k8s.io run -d --net-host --cgroup "$NODE_CGROUP/$id" \
    --env "LISTEN_ADDR=127.0.0.1:$port" "$image" "$id" >/dev/null || die "ctr run $image failed"
  trap 'ctr_ tasks kill -s KILL "'"$id"'" >/dev/null 2>&1; sleep 0.5; ctr_ tasks rm -f "'"$id"'" >/dev/null 2>&1; ctr_ containers rm "'"$id"'" >/dev/null 2>&1' EXIT
  wait_until 20 healthz curl -fsS "http://127.0.0.1:$port/healthz" || die "$image: no answer on 127.0.0.1:$port"
  log "check: $image answers /healthz $(( ($(date +%s%N) - t) / 1000000 )) ms after ctr run (task pid $(ctr_ tasks ls | awk -v id="$id" '$1 == id {print $2}'), uid $(ps -o uid= -p "$(ctr_ tasks ls | awk -v id="$id" '$1 == id {print $2}')" | tr -d ' '))"
  out=$(curl -fsS -X POST -H 'Content-Type: application/json' "http://127.0.0.1:$port/predict" \
          -d '{"flights":[{"OPERA":"Aerolineas Argentinas","TIPOVUELO":"N","MES":3}]}')
  [ "$out" = '{"predict":[0]}' ] || die "$image: POST /predict answered $out"
  log "check: POST /predict: $out"
}

do_status() {
  local name
  for name in containerd kubelet; do
    if alive "$name"; then printf '%-24s running (pid %s)\n' "$name" "$(cut -d' ' -f1 "$RUN/$name.pid")"
    else printf '%-24s stopped\n' "$name"; fi
  done
}

case "${1:-}" in
  install) do_install ;;
  start) do_start ;;
  stop) do_stop ;;
  status) do_status ;;
  images) refresh_images || true; import_images ;;
  check) do_check ;;
  _ns) in_namespace ;;
  *) die "usage: dev/k8s/node.sh install|start|stop|status|images|check" ;;
esac

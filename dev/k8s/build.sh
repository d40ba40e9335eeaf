#!/usr/bin/env bash
# dev/k8s/build.sh - idempotent install of a REAL Kubernetes control plane using only Debian's
# package registry (apt):
#   * kube-apiserver, kube-controller-manager, kube-scheduler v1.20.2, compiled from
#     Debian bookworm's `kubernetes` SOURCE package (1.20.5+really1.20.2-1.1+deb12u1;
#     upstream tarball incl. vendor/) with Debian's Go 1.19 (golang-1.19-go), offline.
#   * etcd 3.4.23 from Debian's etcd-server .deb (unpacked, no service installed/started).
# Nothing is fetched from outside the Debian mirror. Binaries land in $K8S_DIR/bin.
# Re-running is a no-op once bin/ holds the expected versions (FORCE=1 rebuilds).
# CLEAN=1 removes the build tree + Go cache afterwards (~1.5 GB) - the binaries stay.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
K8S_DIR="$FLIGHTLINE_CACHE/k8s"   # bin/ and .build/ live in the shared cache, outside the clone
BIN="$K8S_DIR/bin"
WORK="$K8S_DIR/.build"
COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler)
STAMP="$BIN/.installed"
trap 'log "FAILED (line $LINENO, exit $?)"' ERR
T0=$(date +%s)

# Bump when the source patches below change, so cached binaries are rebuilt.
PATCH_LEVEL=3
installed() {
  [ -f "$STAMP" ] && [ -x "$BIN/etcd" ] && grep -q "^patches=$PATCH_LEVEL\$" "$STAMP" || return 1
  local c; for c in "${COMPONENTS[@]}"; do [ -x "$BIN/$c" ] || return 1; done
}
if [ "${FORCE:-0}" != 1 ] && installed; then
  log "already installed: $(tr '\n' ' ' < "$STAMP")"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
APT_LOCK=(-o DPkg::Lock::Timeout=600)

# ---------------------------------------------------------------- 1. toolchain (system apt)
GO=/usr/lib/go-1.19/bin/go
need=()
[ -x "$GO" ] || need+=(golang-1.19-go)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v make >/dev/null || need+=(make)
command -v rsync >/dev/null || need+=(rsync)
command -v ss >/dev/null || need+=(iproute2)
command -v kubectl >/dev/null || need+=(kubernetes-client)   # Debian's kubectl 1.20 as a fallback
if [ ${#need[@]} -gt 0 ]; then
  log "apt-get install ${need[*]}"
  if ! apt-get "${APT_LOCK[@]}" install -y --no-install-recommends "${need[@]}" >/dev/null; then
    apt-get "${APT_LOCK[@]}" update >/dev/null
    apt-get "${APT_LOCK[@]}" install -y --no-install-recommends "${need[@]}" >/dev/null
  fi
fi
"$GO" version >&2

# ---------------------------------------------------------------- 2. sources via a private apt config
# (deb-src lines are not in the system sources.list; a private config leaves /etc/apt untouched)
APTDIR="$WORK/apt"
mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial" "$WORK/dl"
cat > "$APTDIR/sources.list" <<'EOF'
deb     http://deb.debian.org/debian bookworm main
deb-src http://deb.debian.org/debian bookworm main
deb     http://deb.debian.org/debian bookworm-updates main
deb-src http://deb.debian.org/debian bookworm-updates main
deb     http://deb.debian.org/debian-security bookworm-security main
deb-src http://deb.debian.org/debian-security bookworm-security main
EOF
APTO=("${APT_LOCK[@]}" -o Dir::Etc::SourceList="$APTDIR/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o Dir::State::Lists="$APTDIR/lists" -o Dir::Cache="$APTDIR/cache" -o APT::Sandbox::User=root)
log "apt-get update (private deb + deb-src index)"
apt-get "${APTO[@]}" update >/dev/null
cd "$WORK/dl"
if ! ls kubernetes_*.orig.tar.gz >/dev/null 2>&1; then
  log "apt-get source --download-only kubernetes"
  apt-get "${APTO[@]}" source --download-only kubernetes >/dev/null
fi
if ! ls etcd-server_*.deb golang-github-modern-go-reflect2-dev_*.deb >/dev/null 2>&1; then
  log "apt-get download etcd-server golang-github-modern-go-reflect2-dev"
  apt-get "${APTO[@]}" download etcd-server golang-github-modern-go-reflect2-dev >/dev/null
fi
ORIG=$(ls kubernetes_*.orig.tar.gz | sort -V | tail -1)
DEBVER=$(ls kubernetes_*.dsc | sort -V | tail -1 | sed 's/^kubernetes_//; s/\.dsc$//')

# ---------------------------------------------------------------- 3. unpack + patch vendor
SRCTOP=$( (tar tzf "$ORIG" || true) | head -1 | cut -d/ -f1)   # kubernetes-1.20.2
case "$SRCTOP" in kubernetes-1.*) ;; *) log "unexpected source layout: $SRCTOP"; exit 1 ;; esac
SRC="$WORK/$SRCTOP"
if [ ! -f "$SRC/.unpacked" ]; then
  rm -rf "$SRC"
  log "unpacking $ORIG"
  tar xzf "$ORIG" -C "$WORK"
  # vendored reflect2 v1.0.1 breaks with Go >= 1.18; swap in Debian's v1.0.2 (API compatible)
  rm -rf "$WORK/reflect2" && mkdir -p "$WORK/reflect2"
  dpkg-deb -x golang-github-modern-go-reflect2-dev_*.deb "$WORK/reflect2"
  R="$SRC/vendor/github.com/modern-go/reflect2"
  rm -f "$R"/*.go "$R"/*.s
  cp "$WORK"/reflect2/usr/share/gocode/src/github.com/modern-go/reflect2/*.go \
     "$WORK"/reflect2/usr/share/gocode/src/github.com/modern-go/reflect2/*.s "$R"/
  touch "$SRC/.unpacked"
fi
# go-openapi/validate treats a value as null when reflect.DeepEqual(reflect.Zero(T), reflect.ValueOf(v)),
# comparing two reflect.Value structs. Go >= 1.19 points both at the same shared zero buffer for "",
# 0 and false, so every empty string, zero and false in a custom resource was rejected as "null".
# Upstream later reduced the check to `data == nil`; do the same.
for TYPE_GO in "$SRC"/vendor/github.com/go-openapi/validate/type.go "$SRC"/vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go; do
  if [ -f "$TYPE_GO" ] && grep -q 'data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data))' "$TYPE_GO"; then
    log "patching ${TYPE_GO#"$SRC"/vendor/}: zero values are not null"
    sed -i 's/if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {/if data == nil {/' "$TYPE_GO"
  fi
done

# ---------------------------------------------------------------- 4. build (upstream Makefile, vendor/, no network)
# `make` first generates the zz_generated openapi/deepcopy/... files (not shipped in the
# tarball), then builds statically linked binaries; the version (v1.20.2) is stamped from
# the git-archive metadata in the tarball. `providerless` drops the in-tree cloud providers.
export PATH="/usr/lib/go-1.19/bin:$PATH" GOPROXY=off GOTOOLCHAIN=local GOFLAGS=-tags=providerless
export GOCACHE="$WORK/gocache"
mkdir -p "$BIN"
cd "$SRC"
s=$(date +%s)
WHAT=""; for c in "${COMPONENTS[@]}"; do WHAT="$WHAT cmd/$c"; done
log "make WHAT=\"${WHAT# }\" (the slow part: ~10-20 min on 2 cores)"
make WHAT="${WHAT# }" KUBE_BUILD_PLATFORMS=linux/amd64 >"$WORK/make.log" 2>&1 || { tail -40 "$WORK/make.log" >&2; exit 1; }
for c in "${COMPONENTS[@]}"; do install -m 0755 "_output/local/bin/linux/amd64/$c" "$BIN/$c"; done
log "built ${COMPONENTS[*]} in $(( $(date +%s) - s ))s"
KVER=$("$BIN/kube-apiserver" --version | awk '{print $2}')

# ---------------------------------------------------------------- 5. etcd from the .deb (no service)
rm -rf "$WORK/etcd" && mkdir -p "$WORK/etcd"
dpkg-deb -x "$WORK"/dl/etcd-server_*.deb "$WORK/etcd"
install -m 0755 "$WORK/etcd/usr/bin/etcd" "$BIN/etcd"
ETCDVER=$("$BIN/etcd" --version | awk '/etcd Version/{print $3}')

{
  echo "patches=$PATCH_LEVEL"
  echo "kubernetes=$KVER (debian source $DEBVER, $("$GO" version | awk '{print $3}'))"
  echo "etcd=$ETCDVER ($(ls "$WORK"/dl/etcd-server_*.deb | xargs -n1 basename))"
} > "$STAMP"
"$BIN/kube-apiserver" --version >&2

if [ "${CLEAN:-0}" = 1 ]; then
  log "CLEAN=1: removing build tree and Go cache"
  rm -rf "$WORK/$SRCTOP" "$WORK/gocache" "$WORK/reflect2" "$WORK/etcd"
fi
log "done in $(( $(date +%s) - T0 ))s: $(tr '\n' ' ' < "$STAMP")"
du -sh "$BIN" >&2

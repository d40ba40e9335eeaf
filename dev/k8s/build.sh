#!/usr/bin/env bash
# dev/k8s/build.sh - idempotent build of a REAL, current Kubernetes control plane from Go modules
# (the Go module proxy is the only source):
#   * kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (static, CGO_ENABLED=0) and
#     kubelet (cgo, as upstream builds it) from k8s.io/kubernetes v$K8S_VERSION (kubectl of the same
#     minor as the server: the machine's own is older than kubectl's +/-1 version skew allows);
#   * etcd from go.etcd.io/etcd/server/v3 v$ETCD_VERSION.
# `go install k8s.io/kubernetes/cmd/...@v1.x` is refused (its go.mod has replace directives), so each
# is built inside a small consumer module under $K8S_HOME/v$K8S_VERSION/mod that requires the module
# and replaces every staging module kubernetes requires at v0.0.0 (k8s.io/api, k8s.io/apiserver, ...)
# with its published v0.<minor>.<patch>. The list is generated from kubernetes' own go.mod.
# Binaries land in $K8S_BIN (default $FLIGHTLINE_CACHE/k8s/v$K8S_VERSION/bin, outside the clone) with
# a .installed stamp; GOCACHE is $FLIGHTLINE_CACHE/k8s/gocache, GOMODCACHE stays Go's default.
# Re-running is a no-op once the stamp matches (FORCE=1 rebuilds). CLEAN=1 drops the Go build cache.
# (The former lane, 1.20.2 from Debian's source package with Go 1.19 and a go-openapi patch that made
# zero values in custom resources valid again, is gone: 1.35's kube-openapi validates `data == nil`.)
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
K8S_HOME="$FLIGHTLINE_CACHE/k8s"
BIN="$K8S_BIN"
MOD="$K8S_HOME/v$K8S_VERSION/mod"
ETCD_MOD="$K8S_HOME/etcd-v$ETCD_VERSION/mod"
COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet)
STAMP="$BIN/.installed"
# Bump when the way the binaries are built changes (flags, tags), so cached binaries are rebuilt.
RECIPE=2
WANT="recipe=$RECIPE kubernetes=v$K8S_VERSION etcd=v$ETCD_VERSION"
trap 'log "FAILED (line $LINENO, exit $?)"' ERR
T0=$(date +%s)

installed() {
  [ -f "$STAMP" ] && [ "$(head -1 "$STAMP")" = "$WANT" ] && [ -x "$BIN/etcd" ] || return 1
  local c; for c in "${COMPONENTS[@]}"; do [ -x "$BIN/$c" ] || return 1; done
}
if [ "${FORCE:-0}" != 1 ] && installed; then
  log "already installed in $BIN: $(head -1 "$STAMP")"
  exit 0
fi

step() { STEP_T=$(date +%s); log "$*"; }
took() { log "  ... ${1:-done} in $(( $(date +%s) - STEP_T ))s"; }

# ---------------------------------------------------------------- 1. tools (system apt)
need=()
command -v go >/dev/null || die "Go is missing (this machine kind ships Go 1.26)"
command -v jq >/dev/null || need+=(jq)
command -v gcc >/dev/null || need+=(gcc libc6-dev)   # kubelet links with cgo
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v ss >/dev/null || need+=(iproute2)
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
# The go command must not switch toolchains behind our back; a too-old local Go fails loudly below.
export GOTOOLCHAIN=local GOCACHE="$K8S_HOME/gocache" GOFLAGS=-buildvcs=false
unset GOOS GOARCH
log "$(go version); kubernetes v$K8S_VERSION, etcd v$ETCD_VERSION -> $BIN"
mkdir -p "$BIN" "$MOD" "$ETCD_MOD" "$GOCACHE"

# ---------------------------------------------------------------- 2. kubernetes consumer module
MINOR=${K8S_VERSION#1.}            # 35.4 -> staging modules are v0.35.4
# (.resolved holds the components the module was tidied for: another list resolves again)
if [ "$(cat "$MOD/.resolved" 2>/dev/null)" != "${COMPONENTS[*]}" ] || [ "${FORCE:-0}" = 1 ]; then
  step "go mod download k8s.io/kubernetes@v$K8S_VERSION (the module zip: ~40 MB)"
  GM=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | jq -r .GoMod)
  [ -s "$GM" ] || die "no go.mod for k8s.io/kubernetes@v$K8S_VERSION"
  took
  KGO=$(awk '$1=="go"{print $2; exit}' "$GM")
  log "kubernetes v$K8S_VERSION's go.mod: go $KGO (local: $(go env GOVERSION))"
  rm -f "$MOD/go.mod" "$MOD/go.sum" "$MOD/.resolved"
  (cd "$MOD" && go mod init flightline.local/k8s-build >/dev/null 2>&1)
  cd "$MOD"
  edits=(-go="$KGO" -require="k8s.io/kubernetes@v$K8S_VERSION")
  # every module kubernetes requires at v0.0.0 is a staging module served as v0.<minor>.<patch>
  for m in $(awk '$2=="v0.0.0"{print $1}' "$GM"); do edits+=(-replace="$m=$m@v0.$MINOR"); done
  # godebug lines only count in the main module: copy kubernetes' (single-line and block form)
  for kv in $(awk '$1=="godebug" && $2!="("{print $2} /^godebug \(/{b=1;next} b&&/^\)/{b=0} b{print $1}' "$GM"); do
    edits+=(-godebug="$kv")
  done
  for c in "${COMPONENTS[@]}"; do edits+=(-tool="k8s.io/kubernetes/cmd/$c"); done
  go mod edit "${edits[@]}"
  log "consumer module: $(grep -c '=> ' go.mod) staging replaces, godebug: $(grep '^godebug' go.mod | tr '\n' ' ')"
  step "go mod tidy (resolves the module graph; the sources download during the builds)"
  go mod tidy >"$MOD/tidy.log" 2>&1 || { tail -30 "$MOD/tidy.log" >&2; die "go mod tidy failed"; }
  took
  echo "${COMPONENTS[*]}" >"$MOD/.resolved"
fi
cd "$MOD"

# ---------------------------------------------------------------- 3. build (upstream's tags and stamps)
# hack/lib/golang.sh: -tags selinux,notest; version via -X, else the binaries report v0.0.0; -s -w as
# upstream's default GOLDFLAGS. Only the control plane is static; the kubelet keeps cgo like upstream.
VPKGS=(k8s.io/component-base/version k8s.io/client-go/pkg/version)
LDFLAGS="-s -w"
BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
for p in "${VPKGS[@]}"; do
  LDFLAGS+=" -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=${MINOR%%.*}"
  LDFLAGS+=" -X $p.gitTreeState=clean -X $p.buildDate=$BUILD_DATE"
done
for c in "${COMPONENTS[@]}"; do
  cgo=0; [ "$c" = kubelet ] && cgo=1
  case $c in
    kube-apiserver) note="; compiles most shared packages: the longest step" ;;
    kubelet) note="; cgo changes every package's build: the second long step" ;;
    *) note="" ;;
  esac
  step "go build $c (CGO_ENABLED=$cgo$note)"
  CGO_ENABLED=$cgo go build -trimpath -tags selinux,notest -ldflags "$LDFLAGS" -o "$BIN/$c.new" "k8s.io/kubernetes/cmd/$c"
  mv -f "$BIN/$c.new" "$BIN/$c"
  took "$c $(du -h "$BIN/$c" | cut -f1)"
done

# ---------------------------------------------------------------- 4. etcd (its own consumer module)
# go.etcd.io/etcd/server/v3 has replace directives too, and sharing kubernetes' module graph would
# move either side's dependencies; a second module keeps both at the versions their releases test.
cd "$ETCD_MOD"
if [ ! -f .resolved ] || [ "${FORCE:-0}" = 1 ]; then
  rm -f go.mod go.sum
  go mod init flightline.local/etcd-build >/dev/null 2>&1
  step "go get -tool go.etcd.io/etcd/server/v3@v$ETCD_VERSION"
  go get -tool "go.etcd.io/etcd/server/v3@v$ETCD_VERSION" >get.log 2>&1 || { tail -30 get.log >&2; die "go get etcd failed"; }
  took
  touch .resolved
fi
step "go build etcd"
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.new" go.etcd.io/etcd/server/v3
mv -f "$BIN/etcd.new" "$BIN/etcd"
took "etcd $(du -h "$BIN/etcd" | cut -f1)"

# ---------------------------------------------------------------- 5. check + stamp
KVER=$("$BIN/kube-apiserver" --version | awk '{print $2}')
[ "$KVER" = "v$K8S_VERSION" ] || die "kube-apiserver reports $KVER, expected v$K8S_VERSION"
ETCDVER=$("$BIN/etcd" --version | awk '/etcd Version/{print $3}')
[ "$ETCDVER" = "$ETCD_VERSION" ] || die "etcd reports $ETCDVER, expected $ETCD_VERSION"
{
  echo "$WANT"
  echo "built $BUILD_DATE with $(go env GOVERSION), tags selinux,notest"
  for c in "${COMPONENTS[@]}" etcd; do echo "$c $("$BIN/$c" --version 2>/dev/null | head -1)"; done
} > "$STAMP"
if [ "${CLEAN:-0}" = 1 ]; then
  log "CLEAN=1: removing the Go build cache ($(du -sh "$GOCACHE" | cut -f1))"
  rm -rf "$GOCACHE"
fi
log "done in $(( $(date +%s) - T0 ))s: $(head -1 "$STAMP")"
du -sh "$BIN" >&2

# Shared by the bench/ scripts (sourced). Benchmarks print figures; they assert nothing and are not
# part of dev/test. They build release binaries (first time: several minutes).
. "$(dirname "${BASH_SOURCE[0]}")/../dev/lib.sh"
RELEASE="$CARGO_TARGET_DIR/release"
BENCH_LOGS="$LOGS/bench"
mkdir -p "$BENCH_LOGS"
# The load generator is one client on one address: the services' per-client rate limit and their
# concurrency limit would answer most of its requests with 429/503. The benchmarks measure capacity,
# so both are lifted here (what the limiter costs per request: cargo bench --workspace --bench ratelimit).
export HTTP_RATE_LIMIT_RPS=0 HTTP_MAX_CONCURRENT_REQUESTS=4096
PIDS=()
cleanup() { local p; for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

build_release() {
  apt_install wrk hey
  log "cargo build --release --workspace (first time: several minutes)"
  (cd "$REPO" && cargo build --release --workspace --locked -q) || die "release build failed"
}

# run_bg NAME CMD... : start a release binary in the background, stopped on exit
run_bg() {
  local name=$1; shift
  "$@" >"$BENCH_LOGS/$name.log" 2>&1 &
  PIDS+=($!)
}

wait_http() { wait_until 30 "$1" curl -fsS "$1" || die "$1 did not answer (logs in $BENCH_LOGS)"; }

# hey's summary lines: requests/sec and the latency percentiles
hey_summary() { grep -E "Requests/sec|Average:|  (50|90|99)% in|\] +[0-9]+ responses" | sed 's/^ */    /'; }

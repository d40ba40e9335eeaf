#!/usr/bin/env python3
"""bench/operator_scale.py - the helper of bench/operator-scale (stdlib + PyYAML from the venv).

  proxy        counting TCP proxies in front of Kafka and ClickHouse: the bench pipelines name them,
               so every Kafka request (by API key) and ClickHouse query (by kind) the operator makes
               for them is counted, with the connections opened and each call's answer time
  flowschemas  APF FlowSchemas (JSON list for kubectl apply) that route the operator's requests,
               one FlowSchema per verb and resource, to the `exempt` priority level (as the
               system:masters identity of dev/operator is): the API server's own
               apiserver_flowcontrol_dispatched_requests_total then counts them by verb and resource
  settle       wait until the operator has no reconcile in hand and its count stands still
  ramp         create N FlightPipelines at once (parallel POSTs) and watch (list + watch, no polling)
               until all are Ready; snapshots before the first create and when the last is Ready
  snapshot     the counters of one moment: API server (APF), proxies, operator metrics, /proc
  delete       delete the bench pipelines and wait until they are gone (their finalizers ran)
  storage      count (and with --delete remove) the topics and tables a run left behind
  report       the summary table from the snapshots
  spans        where the operator's time went: its log's span closes (FLIGHTLINE_LOG_SPAN_TIMES=1) by
               span name (reconcile, storage, kafka_*, clickhouse_*, status_update, event, ...)
"""
import argparse
import asyncio
import base64
import collections
import concurrent.futures
import http.client
import json
import os
import re
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

import yaml

GROUP_PATH = "/apis/flightline.dev/v1alpha1"
FS_PREFIX = "bench-opscale"
FS_LABEL = {"flightline.dev/bench": "operator-scale"}
VERBS = ["get", "list", "watch", "create", "update", "patch", "delete"]
# What the operator reads and writes; everything else lands in "<verb>-other".
RESOURCES = [
    ("flightpipelines", "flightpipelines"),
    ("flightpipelines.status", "flightpipelines/status"),
    ("configmaps", "configmaps"),
    ("services", "services"),
    ("deployments", "deployments"),
    ("hpas", "horizontalpodautoscalers"),
    ("servicemonitors", "servicemonitors"),
    ("prometheusrules", "prometheusrules"),
    ("scaledobjects", "scaledobjects"),
    ("events", "events"),
    ("leases", "leases"),
    ("secrets", "secrets"),
]
KAFKA_APIS = {0: "Produce", 1: "Fetch", 2: "ListOffsets", 3: "Metadata", 17: "SaslHandshake", 18: "ApiVersions",
              19: "CreateTopics", 20: "DeleteTopics", 32: "DescribeConfigs", 33: "AlterConfigs",
              36: "SaslAuthenticate", 37: "CreatePartitions", 44: "IncrementalAlterConfigs"}
# ClickHouse statements by what the operator uses them for (first match wins).
CH_KINDS = [
    ("describe: system.columns", re.compile(r"system\.columns", re.I)),
    ("owner check before DROP", re.compile(r"SELECT\s+comment\s+FROM\s+system\.tables", re.I)),
    ("describe: system.tables", re.compile(r"system\.tables", re.I)),
    ("CREATE DATABASE", re.compile(r"CREATE\s+DATABASE", re.I)),
    ("CREATE TABLE", re.compile(r"CREATE\s+TABLE", re.I)),
    ("ALTER TABLE", re.compile(r"ALTER\s+TABLE", re.I)),
    ("DROP TABLE", re.compile(r"DROP\s+TABLE", re.I)),
]


def log(msg):
    print(f"[operator_scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- Kubernetes API (admin kubeconfig)

class Kube:
    def __init__(self, kubeconfig):
        with open(kubeconfig) as f:
            cfg = yaml.safe_load(f)
        ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == cfg["current-context"])
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in cfg["users"] if u["name"] == ctx["user"])
        server = urllib.parse.urlsplit(cluster["server"])
        self.host, self.port = server.hostname, server.port or 443

        def pem(data_key, file_key, where):
            if where.get(data_key):
                return base64.b64decode(where[data_key])
            with open(where[file_key], "rb") as f:
                return f.read()

        self.ssl = ssl.create_default_context(
            cadata=pem("certificate-authority-data", "certificate-authority", cluster).decode())
        self.headers = {"Accept": "application/json"}
        if user.get("token"):
            self.headers["Authorization"] = f"Bearer {user['token']}"
        else:
            # ssl loads a client certificate from a file only: a private temporary file, removed at once
            with tempfile.NamedTemporaryFile(prefix="opscale-", suffix=".pem") as f:
                f.write(pem("client-certificate-data", "client-certificate", user) + b"\n"
                        + pem("client-key-data", "client-key", user))
                f.flush()
                self.ssl.load_cert_chain(f.name)

    def connect(self, timeout=60):
        return http.client.HTTPSConnection(self.host, self.port, context=self.ssl, timeout=timeout)

    def call(self, method, path, body=None, conn=None, content_type="application/json"):
        own = conn is None
        conn = conn or self.connect()
        headers = dict(self.headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        if own:
            conn.close()
        try:
            return resp.status, json.loads(raw) if raw else {}
        except ValueError:
            return resp.status, raw.decode(errors="replace")

    def text(self, path):
        conn = self.connect()
        conn.request("GET", path, headers={**self.headers, "Accept": "text/plain"})
        resp = conn.getresponse()
        raw = resp.read().decode()
        conn.close()
        if resp.status != 200:
            raise RuntimeError(f"GET {path}: {resp.status} {raw[:200]}")
        return raw


# ---------------------------------------------------------------- counting proxies

class Tally:
    def __init__(self):
        self.connections = 0
        self.requests = collections.Counter()
        self.answered = collections.Counter()
        self.answer_seconds = collections.Counter()

    def as_json(self):
        return {"connections": self.connections, "requests": dict(self.requests),
                "answered": dict(self.answered), "answer_seconds": dict(self.answer_seconds)}


class KafkaFrames:
    """Request frames of a Kafka connection: 4-byte size, then api_key (int16), version, ..."""

    def __init__(self):
        self.buf = bytearray()
        self.skip = 0

    def feed(self, data):
        self.buf += data
        kinds = []
        while True:
            if self.skip:
                n = min(self.skip, len(self.buf))
                del self.buf[:n]
                self.skip -= n
                if self.skip:
                    break
            if len(self.buf) < 6:
                break
            size, api_key = struct.unpack(">ih", self.buf[:6])
            kinds.append(KAFKA_APIS.get(api_key, f"api_key {api_key}"))
            del self.buf[:4]
            self.skip = size
        return kinds


class HttpRequests:
    """Requests of an HTTP/1.1 connection (Content-Length or chunked bodies), each classified by
    the SQL in its URL or body."""

    KEEP = 64 * 1024  # enough of a body to classify it

    def __init__(self):
        self.buf = bytearray()
        self.state = "head"
        self.remaining = 0
        self.target = ""
        self.body = bytearray()

    def _take(self, n):
        part = bytes(self.buf[:n])
        del self.buf[:n]
        if len(self.body) < self.KEEP:
            self.body += part[: self.KEEP - len(self.body)]
        return len(part)

    def _finish(self):
        text = urllib.parse.unquote_plus(self.target) + "\n" + self.body.decode("latin-1")
        self.state, self.body = "head", bytearray()
        return next((kind for kind, rx in CH_KINDS if rx.search(text)), "other")

    def feed(self, data):
        self.buf += data
        kinds = []
        while True:
            if self.state == "head":
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
                del self.buf[: end + 4]
                self.target = head[0].split(" ")[1] if " " in head[0] else ""
                fields = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
                if "chunked" in fields.get("transfer-encoding", "").lower():
                    self.state = "chunk-size"
                elif int(fields.get("content-length") or 0) > 0:
                    self.state, self.remaining = "body", int(fields["content-length"])
                else:
                    kinds.append(self._finish())
            elif self.state == "body":
                if not self.buf:
                    break
                self.remaining -= self._take(self.remaining)
                if self.remaining == 0:
                    kinds.append(self._finish())
            elif self.state == "chunk-size":
                end = self.buf.find(b"\r\n")
                if end < 0:
                    break
                size = int(bytes(self.buf[:end]).split(b";")[0] or b"0", 16)
                del self.buf[: end + 2]
                self.state, self.remaining = ("trailer", 0) if size == 0 else ("chunk-data", size)
            elif self.state == "chunk-data":
                if not self.buf:
                    break
                self.remaining -= self._take(self.remaining)
                if self.remaining == 0:
                    self.state, self.remaining = "chunk-end", 2
            elif self.state == "chunk-end":
                n = min(self.remaining, len(self.buf))
                if n == 0:
                    break
                del self.buf[:n]
                self.remaining -= n
                if self.remaining == 0:
                    self.state = "chunk-size"
            elif self.state == "trailer":
                end = self.buf.find(b"\r\n")
                if end < 0:
                    break
                line = bytes(self.buf[:end])
                del self.buf[: end + 2]
                if not line:
                    kinds.append(self._finish())
        return kinds


async def proxy_connection(client_reader, client_writer, upstream, tally, frames):
    tally.connections += 1
    try:
        up_reader, up_writer = await asyncio.open_connection(*upstream)
    except OSError:
        client_writer.close()
        return
    # The operator's clients send one request and wait for its answer: the first bytes back after
    # a request are its answer (the rest of a long answer arrives with nothing pending).
    pending = collections.deque()

    async def to_upstream():
        while data := await client_reader.read(65536):
            for kind in frames.feed(data):
                tally.requests[kind] += 1
                pending.append((kind, time.monotonic()))
            up_writer.write(data)
            await up_writer.drain()
        if up_writer.can_write_eof():
            up_writer.write_eof()

    async def to_client():
        while data := await up_reader.read(65536):
            if pending:
                kind, sent = pending.popleft()
                tally.answered[kind] += 1
                tally.answer_seconds[kind] += time.monotonic() - sent
            client_writer.write(data)
            await client_writer.drain()

    async def quietly(pipe):
        try:
            await pipe()
        except (OSError, asyncio.IncompleteReadError):
            pass

    up, down = asyncio.create_task(quietly(to_upstream)), asyncio.create_task(quietly(to_client))
    try:
        done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        if down not in done:
            # the client has sent all it will: let the last answer through (the upstream closes)
            await asyncio.wait({down}, timeout=30)
    finally:
        for task in (up, down):
            task.cancel()
        for w in (client_writer, up_writer):
            w.close()


async def run_proxies(a):
    kafka_up = a.kafka_upstream.rsplit(":", 1)
    ch_up = urllib.parse.urlsplit(a.clickhouse_upstream)
    tallies = {"kafka": Tally(), "clickhouse": Tally()}
    kafka = await asyncio.start_server(
        lambda r, w: proxy_connection(r, w, (kafka_up[0], int(kafka_up[1])), tallies["kafka"], KafkaFrames()),
        "127.0.0.1", 0)
    clickhouse = await asyncio.start_server(
        lambda r, w: proxy_connection(r, w, (ch_up.hostname, ch_up.port or 80), tallies["clickhouse"],
                                      HttpRequests()),
        "127.0.0.1", 0)

    async def stats(reader, writer):
        try:
            await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        body = json.dumps({k: t.as_json() for k, t in tallies.items()}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        writer.close()

    stats_server = await asyncio.start_server(stats, "127.0.0.1", 0)
    ports = {"kafka": kafka.sockets[0].getsockname()[1], "clickhouse": clickhouse.sockets[0].getsockname()[1],
             "stats": stats_server.sockets[0].getsockname()[1]}
    tmp = a.ports_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(ports, f)
    os.replace(tmp, a.ports_file)
    log(f"proxies: Kafka 127.0.0.1:{ports['kafka']} -> {a.kafka_upstream}, ClickHouse "
        f"127.0.0.1:{ports['clickhouse']} -> {a.clickhouse_upstream}, counts on 127.0.0.1:{ports['stats']}")
    await asyncio.gather(kafka.serve_forever(), clickhouse.serve_forever(), stats_server.serve_forever())


def cmd_proxy(a):
    try:
        asyncio.run(run_proxies(a))
    except KeyboardInterrupt:
        pass


# ---------------------------------------------------------------- FlowSchemas

def cmd_flowschemas(a):
    namespace, name = a.service_account.split("/")
    subject = [{"kind": "ServiceAccount", "serviceAccount": {"namespace": namespace, "name": name}}]

    def flow_schema(fs_name, precedence, rule):
        return {"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
                "metadata": {"name": f"{FS_PREFIX}-{fs_name}", "labels": FS_LABEL},
                "spec": {"priorityLevelConfiguration": {"name": "exempt"}, "matchingPrecedence": precedence,
                         "rules": [{"subjects": subject, **rule}]}}

    def resource_rule(verbs, resources):
        return {"resourceRules": [{"verbs": verbs, "apiGroups": ["*"], "resources": resources,
                                   "namespaces": ["*"], "clusterScope": True}]}

    items = []
    for verb in VERBS:
        for key, resource in RESOURCES:
            items.append(flow_schema(f"{verb}-{key}", 50, resource_rule([verb], [resource])))
    for verb in VERBS + ["deletecollection"]:
        items.append(flow_schema(f"{verb}-other", 51, resource_rule([verb], ["*"])))
    items.append(flow_schema("discovery", 50, {"nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}]}))
    json.dump({"apiVersion": "v1", "kind": "List", "items": items}, sys.stdout)


def apf_counts(kube):
    counts = {}
    rx = re.compile(r'^apiserver_flowcontrol_dispatched_requests_total\{[^}]*flow_schema="' + FS_PREFIX
                    + r'-([^"]+)"[^}]*\} ([0-9.e+]+)$')
    for line in kube.text("/metrics").splitlines():
        m = rx.match(line)
        if m:
            counts[m.group(1)] = counts.get(m.group(1), 0) + float(m.group(2))
    return counts


def cmd_apf_wait(a):
    """The FlowSchemas are taken up: a request as the ServiceAccount raises its counter."""
    admin, account = Kube(a.kubeconfig), Kube(a.account_kubeconfig)
    deadline = time.time() + a.timeout
    while time.time() < deadline:
        before = apf_counts(admin).get("list-configmaps", 0)
        account.call("GET", f"/api/v1/namespaces/{a.namespace}/configmaps")
        time.sleep(0.5)
        if apf_counts(admin).get("list-configmaps", 0) > before:
            return
        time.sleep(1)
    sys.exit(f"the API server does not count the ServiceAccount's requests by the {FS_PREFIX}-* FlowSchemas")


# ---------------------------------------------------------------- snapshots

def get_json(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


def operator_metrics(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out = {"reconciliations": {}, "errors": {}, "duration_sum": 0.0, "duration_count": 0.0, "in_flight": 0.0}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r'^([a-z_]+)(?:\{([^}]*)\})? ([0-9.e+-]+)', line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        label = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if name == "flightline_operator_reconciliations_total":
            out["reconciliations"][label.get("result", "")] = value
        elif name == "flightline_operator_reconcile_errors_total":
            out["errors"][label.get("reason", "")] = value
        elif name == "flightline_operator_reconcile_duration_seconds_sum":
            out["duration_sum"] = value
        elif name == "flightline_operator_reconcile_duration_seconds_count":
            out["duration_count"] = value
        elif name == "flightline_operator_reconciles_in_flight":
            out["in_flight"] = value
    return out


def proc_status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                fields[key] = int(value.split()[0])  # kB
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read().rsplit(")", 1)[1].split()
    fields["cpu_seconds"] = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return fields


# The stack's processes whose CPU a snapshot records: where a ramp's time goes besides the operator.
STACK_PROCESSES = {"kube-apiserver": re.compile(r"(^|/)kube-apiserver( |$)"), "etcd": re.compile(r"(^|/)etcd( |$)"),
                   "kafka": re.compile(r"kafka\.Kafka"), "chdb": re.compile(r"chdb_http\.py")}


def stack_cpu():
    """CPU seconds (user + system) of the API server, etcd, Kafka and the chDB front end."""
    cpu = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            for name, pattern in STACK_PROCESSES.items():
                if pattern.search(cmdline):
                    cpu[name] = cpu.get(name, 0.0) + proc_status(pid)["cpu_seconds"]
        except OSError:
            continue
    return cpu


def machine_cpu():
    """CPU seconds of the whole machine since boot: busy (all but idle and iowait) and in all."""
    with open("/proc/stat") as f:
        ticks = [int(t) for t in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    return {"busy": (sum(ticks) - ticks[3] - ticks[4]) / hz, "all": sum(ticks) / hz}


def snapshot(a, kube, phase):
    snap = {"phase": phase, "time": time.time(), "apf": apf_counts(kube),
            "proxy": get_json(f"http://127.0.0.1:{a.stats_port}/"),
            "operator": operator_metrics(a.metrics_url), "proc": proc_status(a.pid), "stack_cpu": stack_cpu(),
            "machine_cpu": machine_cpu()}
    with open(os.path.join(a.dir, f"{phase}.json"), "w") as f:
        json.dump(snap, f)
    return snap


def cmd_snapshot(a):
    snapshot(a, Kube(a.kubeconfig), a.phase)


def cmd_settle(a):
    """Idle: nothing in flight and no reconcile finished for `quiet` seconds."""
    start = time.time()
    last, since = None, time.time()
    while time.time() - start < a.timeout:
        m = operator_metrics(a.metrics_url)
        total = sum(m["reconciliations"].values())
        if total != last or m["in_flight"] > 0:
            last, since = total, time.time()
        elif time.time() - since >= a.quiet:
            log(f"operator idle after {time.time() - start:.0f} s ({total:.0f} reconciles so far)")
            return
        time.sleep(0.5)
    log(f"operator still busy after {a.timeout:.0f} s (other namespaces' pipelines); going on")


# ---------------------------------------------------------------- ramp

def pipeline(a, name):
    return {
        "apiVersion": "flightline.dev/v1alpha1", "kind": "FlightPipeline",
        "metadata": {"name": name, "namespace": a.namespace, "labels": FS_LABEL},
        "spec": {
            "kafka": {"bootstrapServers": a.kafka, "topic": f"{a.topic_prefix}{name}", "partitions": 1},
            "clickhouse": {"url": a.clickhouse, "database": a.database, "table": name},
            # workloads off (no Deployments and Services: the local cluster's Service range is a /24,
            # room for 254 ClusterIPs), monitoring on (ServiceMonitor, PrometheusRule, dashboard)
            "ingest": {"enabled": False}, "sink": {"enabled": False}, "query": {"enabled": False},
            "predict": {"enabled": False},
            "monitoring": MONITORING[a.monitoring],
            "deletionPolicy": "Delete",
        },
    }


# What each pipeline's monitoring children are (MONITORING=...): all three (the default), all but the
# dashboard ConfigMap (54 KB each), or none: what each costs the API server at fleet scale.
MONITORING = {
    "on": {"serviceMonitor": True, "alertRules": True, "dashboards": True},
    "no-dashboards": {"serviceMonitor": True, "alertRules": True, "dashboards": False},
    "off": {"serviceMonitor": False, "alertRules": False, "dashboards": False},
}


def ready_reason(obj):
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True", c.get("reason") or "?"
    return False, "no status yet"


def cmd_ramp(a):
    kube = Kube(a.kubeconfig)
    base = f"{GROUP_PATH}/namespaces/{a.namespace}/flightpipelines"
    width = max(4, len(str(a.n - 1)))
    names = [f"p{i:0{width}d}" for i in range(a.n)]
    ready_at, reasons = {}, {}
    lock = threading.Lock()
    t0 = None

    def observe(obj):
        name = obj["metadata"]["name"]
        ok, reason = ready_reason(obj)
        with lock:
            reasons[name] = reason
            if ok and name not in ready_at and t0 is not None:
                ready_at[name] = time.time() - t0

    status, listed = kube.call("GET", base)
    if status != 200:
        sys.exit(f"listing FlightPipelines in {a.namespace}: {status} {listed}")
    rv = listed["metadata"]["resourceVersion"]

    def watch():
        nonlocal rv
        while True:
            conn = kube.connect(timeout=None)
            conn.request("GET", f"{base}?watch=1&allowWatchBookmarks=true&timeoutSeconds=900&resourceVersion={rv}",
                         headers=kube.headers)
            resp = conn.getresponse()
            gone = False
            while line := resp.readline():
                event = json.loads(line)
                obj = event["object"]
                if event["type"] == "ERROR":
                    gone = obj.get("code") == 410
                    break
                rv = obj["metadata"]["resourceVersion"]
                if event["type"] in ("ADDED", "MODIFIED"):
                    observe(obj)
            conn.close()
            if gone:  # too old a resourceVersion: list again, then watch on from there
                _, again = kube.call("GET", base)
                for obj in again["items"]:
                    observe(obj)
                rv = again["metadata"]["resourceVersion"]

    threading.Thread(target=watch, daemon=True).start()
    snapshot(a, kube, "ramp_start")
    local = threading.local()

    def create(name):
        if not hasattr(local, "conn"):
            local.conn = kube.connect()
        status, body = kube.call("POST", base, pipeline(a, name), conn=local.conn)
        if status != 201:
            raise RuntimeError(f"creating {name}: {status} {body if isinstance(body, str) else body.get('message')}")

    log(f"creating {a.n} FlightPipelines in {a.namespace} ({a.concurrency} at a time), watching for Ready")
    t0 = time.time()
    with concurrent.futures.ThreadPoolExecutor(a.concurrency) as pool:
        futures = [pool.submit(create, n) for n in names]
        last_print = 0.0
        while True:
            done = sum(f.done() for f in futures)
            for f in futures:
                if f.done() and f.exception():
                    raise f.exception()
            if done == len(futures):
                break
            if time.time() - last_print >= 5:
                with lock:
                    log(f"  {time.time() - t0:6.1f} s: created {done}/{a.n}, Ready {len(ready_at)}")
                last_print = time.time()
            time.sleep(0.05)
    applied = time.time() - t0
    log(f"  all {a.n} created in {applied:.1f} s")
    last_print = time.time()
    while True:
        with lock:
            n_ready = len(ready_at)
        if n_ready >= a.n:
            break
        if not os.path.exists(f"/proc/{a.pid}"):
            log(f"  the operator exited after {time.time() - t0:.0f} s with {n_ready}/{a.n} Ready")
            with open(os.path.join(a.dir, "ramp.json"), "w") as f:
                json.dump({"n": a.n, "ready": n_ready, "apply_seconds": applied, "ready_seconds": None,
                           "operator_exited": time.time() - t0, "watched_until_seconds": time.time() - t0}, f)
            sys.exit(1)
        if time.time() - t0 > a.timeout:
            with lock:
                waiting = collections.Counter(r for n, r in reasons.items() if n not in ready_at)
            log(f"  timed out after {a.timeout:.0f} s: {n_ready}/{a.n} Ready; the others: {dict(waiting)}")
            break
        if time.time() - last_print >= 5:
            log(f"  {time.time() - t0:6.1f} s: Ready {n_ready}/{a.n}")
            last_print = time.time()
        time.sleep(0.05)
    at_ready = snapshot(a, kube, "ready")
    times = sorted(ready_at.values())

    def pct(p):
        return times[min(len(times) - 1, int(p * len(times)))] if times else None

    result = {"n": a.n, "ready": len(times), "apply_seconds": applied,
              "ready_seconds": times[-1] if len(times) == a.n else None,
              "watched_until_seconds": at_ready["time"] - t0,
              "first_ready": pct(0), "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99)}
    with open(os.path.join(a.dir, "ramp.json"), "w") as f:
        json.dump(result, f)
    if result["ready_seconds"] is None:
        sys.exit(1)
    log(f"  all {a.n} Ready {result['ready_seconds']:.1f} s after the first create")


# ---------------------------------------------------------------- cleanup

def cmd_delete(a):
    kube = Kube(a.kubeconfig)
    base = f"{GROUP_PATH}/namespaces/{a.namespace}/flightpipelines"
    status, listed = kube.call("GET", base)
    if status == 404:
        return
    total = len(listed.get("items", []))
    if total == 0:
        return
    t0 = time.time()
    status, body = kube.call("DELETE", base)  # deletecollection: the finalizers run in the operator
    if status not in (200, 202):
        sys.exit(f"deleting the pipelines: {status} {body}")
    log(f"deleting {total} FlightPipelines (the operator removes their topics and tables)")
    last_print = 0.0
    while True:
        _, listed = kube.call("GET", base)
        left = len(listed.get("items", []))
        if left == 0:
            log(f"  all {total} gone in {time.time() - t0:.1f} s")
            with open(os.path.join(a.dir, "delete.json"), "w") as f:
                json.dump({"n": total, "seconds": time.time() - t0}, f)
            return
        if time.time() - t0 > a.timeout:
            sys.exit(f"{left} FlightPipelines still there after {a.timeout:.0f} s")
        if time.time() - last_print >= 10:
            log(f"  {time.time() - t0:6.1f} s: {left} left")
            last_print = time.time()
        time.sleep(1)


class KafkaClient:
    """Just enough of the Kafka protocol to list topics (Metadata v0) and delete them (DeleteTopics)."""

    def __init__(self, address):
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.corr = 0

    def call(self, api_key, version, body):
        self.corr += 1
        client = b"bench-operator-scale"
        msg = struct.pack(">hhih", api_key, version, self.corr, len(client)) + client + body
        self.sock.sendall(struct.pack(">i", len(msg)) + msg)
        size = struct.unpack(">i", self._recv(4))[0]
        data = self._recv(size)
        return data[4:]

    def _recv(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise RuntimeError("Kafka closed the connection")
            buf += chunk
        return buf

    def topics(self):
        data = self.call(3, 0, struct.pack(">i", 0))  # empty list: every topic
        pos = 0

        def i32():
            nonlocal pos
            pos += 4
            return struct.unpack(">i", data[pos - 4:pos])[0]

        def i16():
            nonlocal pos
            pos += 2
            return struct.unpack(">h", data[pos - 2:pos])[0]

        def string():
            nonlocal pos
            n = i16()
            pos += n
            return data[pos - n:pos].decode()

        for _ in range(i32()):  # brokers: node_id, host, port
            i32(), string(), i32()
        names = []
        for _ in range(i32()):
            i16()
            names.append(string())
            for _ in range(i32()):  # partitions: error, id, leader, replicas, isr
                i16(), i32(), i32()
                for _ in range(i32()):
                    i32()
                for _ in range(i32()):
                    i32()
        return names

    def delete(self, names):
        body = struct.pack(">i", len(names))
        for n in names:
            body += struct.pack(">h", len(n)) + n.encode()
        self.call(20, 1, body + struct.pack(">i", 30000))


def cmd_storage(a):
    kafka = KafkaClient(a.kafka)
    topics = [t for t in kafka.topics() if t.startswith(a.topic_prefix)]

    def ch(sql):
        req = urllib.request.Request(a.clickhouse.rstrip("/") + "/", data=sql.encode())
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.read().decode().strip()

    tables = int(ch(f"SELECT count() FROM system.tables WHERE database = '{a.database}'") or 0)
    print(json.dumps({"topics": len(topics), "tables": tables}))
    if a.delete:
        if topics:
            for i in range(0, len(topics), 100):
                kafka.delete(topics[i:i + 100])
        ch(f"DROP DATABASE IF EXISTS `{a.database}`")


# ---------------------------------------------------------------- report

def cmd_report(a):
    def load(name):
        path = os.path.join(a.dir, f"{name}.json")
        return json.load(open(path)) if os.path.exists(path) else None

    ramp, r0, r1, q0, q1 = (load(n) for n in ("ramp", "ramp_start", "ready", "quiet_start", "quiet_end"))
    if not ramp or not r1:
        print(f"== bench/operator-scale: no figures ({'the operator exited during the ramp' if ramp else 'no ramp'})")
        return
    out = []
    p = out.append
    n = ramp["n"]
    p(f"== bench/operator-scale: {n} FlightPipelines, {a.label}")
    if ramp["ready_seconds"]:
        p(f"  all Ready after          {ramp['ready_seconds']:8.1f} s   ({n / ramp['ready_seconds']:.1f} pipelines/s; "
          f"created in {ramp['apply_seconds']:.1f} s; first Ready {ramp['first_ready']:.1f} s, "
          f"p50 {ramp['p50']:.1f} s, p90 {ramp['p90']:.1f} s)")
    else:
        p(f"  NOT all Ready: {ramp['ready']}/{n} after {ramp['watched_until_seconds']:.0f} s")
    mb = lambda kb: f"{kb / 1024:7.1f} MB"  # noqa: E731
    p(f"  operator memory          peak (VmHWM) {mb(q1['proc']['VmHWM'] if q1 else r1['proc']['VmHWM'])}, "
      f"RSS before {mb(r0['proc']['VmRSS'])}, at all Ready {mb(r1['proc']['VmRSS'])}"
      + (f", at the end {mb(q1['proc']['VmRSS'])}" if q1 else ""))

    def recs(s0, s1):
        return sum(s1["operator"]["reconciliations"].values()) - sum(s0["operator"]["reconciliations"].values())

    def errs(s0, s1):
        e = {k: v - s0["operator"]["errors"].get(k, 0) for k, v in s1["operator"]["errors"].items()}
        return {k: int(v) for k, v in e.items() if v}

    def mean_reconcile(s0, s1):
        c = s1["operator"]["duration_count"] - s0["operator"]["duration_count"]
        return (s1["operator"]["duration_sum"] - s0["operator"]["duration_sum"]) / c if c else 0.0

    phases = [("ramp", r0, r1)] + ([("quiet", q0, q1)] if q0 and q1 else [])
    for name, s0, s1 in phases:
        secs = s1["time"] - s0["time"]
        cpu = s1["proc"]["cpu_seconds"] - s0["proc"]["cpu_seconds"]
        p(f"  {name:6} {secs:6.0f} s: {recs(s0, s1):6.0f} reconciles ({recs(s0, s1) / secs * 60:.0f}/min, mean "
          f"{mean_reconcile(s0, s1) * 1000:.0f} ms), errors {errs(s0, s1) or 'none'}, operator CPU {cpu:.1f} s "
          f"({cpu / secs * 100:.1f} % of a core)")
        stack = {k: v - s0.get("stack_cpu", {}).get(k, 0.0) for k, v in s1.get("stack_cpu", {}).items()}
        if stack:
            p("         stack CPU: " + ", ".join(f"{k} {v:.1f} s ({v / secs * 100:.0f} % of a core)"
                                               for k, v in sorted(stack.items(), key=lambda kv: -kv[1])))
        if "machine_cpu" in s0 and "machine_cpu" in s1:
            # Whether the phase was bound by the machine: all cores busy means every component's
            # CPU (not only the operator's) sets the pace.
            busy = s1["machine_cpu"]["busy"] - s0["machine_cpu"]["busy"]
            total = s1["machine_cpu"]["all"] - s0["machine_cpu"]["all"]
            rest = busy - cpu - sum(stack.values())
            p(f"         machine: {busy:.1f} core-s busy of {total:.1f} ({busy / total * 100:.0f} %); the operator "
              f"{cpu / busy * 100:.0f} % of it, the four above {sum(stack.values()) / busy * 100:.0f} %, everything "
              f"else {rest:.1f} s (the bench's client, Prometheus, controllers, kernel)")
    if len(phases) > 1:
        rq = recs(q0, q1)
        p(f"  quiet period: {rq:.0f} reconciles of {a.fleet} watched pipelines "
          f"({'at least one full resync' if rq >= a.fleet else 'LESS than one full resync'}; resync {a.resync} s)")

    def delta(s0, s1, key):
        return {k: v - s0["apf"].get(k, 0) for k, v in s1["apf"].items() if v - s0["apf"].get(k, 0)}

    quiet = len(phases) > 1
    # Quiet figures per pipeline per resync interval: the rate in the window times the interval,
    # divided by the pipelines (the API server sees all the operator watches, the proxies only the
    # bench pipelines). 1.00 reconciles per pipeline per resync = every pipeline once per interval.
    window = q1["time"] - q0["time"] if quiet else 0
    per_resync = (lambda c, pipelines: c * a.resync / window / pipelines) if quiet else None
    if quiet:
        p(f"  quiet: {per_resync(recs(q0, q1), a.fleet):.2f} reconciles per pipeline per resync interval "
          f"(1.00: each once every {a.resync} s)")

    def delta(s0, s1):
        return {k: v - s0["apf"].get(k, 0) for k, v in s1["apf"].items() if v - s0["apf"].get(k, 0)}

    p("")
    p("  API requests of the operator (the API server's APF counters of its ServiceAccount)")
    hdr = f"    {'verb':16} {'ramp':>8} {'per pipeline':>13}"
    if quiet:
        hdr += f" {'quiet':>8} {'per pipeline per resync':>24}"
    p(hdr)
    d_ramp = delta(r0, r1)
    d_quiet = delta(q0, q1) if quiet else {}

    def by_verb(d):
        v = collections.Counter()
        for k, c in d.items():
            v["GET (discovery)" if k == "discovery" else k.split("-", 1)[0]] += c
        return v

    vr, vq = by_verb(d_ramp), by_verb(d_quiet)
    for verb in VERBS + ["deletecollection", "GET (discovery)", "all"]:
        r = sum(vr.values()) if verb == "all" else vr[verb]
        q = sum(vq.values()) if verb == "all" else vq[verb]
        if not r and not q:
            continue
        line = f"    {verb:16} {r:8.0f} {r / n:13.2f}"
        if quiet:
            line += f" {q:8.0f} {per_resync(q, a.fleet):24.2f}"
        p(line)
    p("    by verb and resource:" + ("  (ramp, quiet)" if quiet else ""))
    keys = sorted(set(d_ramp) | set(d_quiet), key=lambda k: -(d_ramp.get(k, 0) + d_quiet.get(k, 0)))
    for k in keys:
        line = f"      {k:32} {d_ramp.get(k, 0):8.0f}"
        if quiet:
            line += f" {d_quiet.get(k, 0):8.0f}"
        p(line)

    p("")
    p("  Kafka and ClickHouse calls for the bench pipelines (counting proxies in front of both)")
    for system in ("kafka", "clickhouse"):
        p(f"    {system:34} {'calls':>7}  {'per pipeline per resync' if quiet else ''}")
        for name, s0, s1 in phases:
            t0, t1 = s0["proxy"][system], s1["proxy"][system]
            conns = t1["connections"] - t0["connections"]
            per = f"{per_resync(conns, n):10.2f}" if name == "quiet" else ""
            p(f"      {name:6} {'connections opened':26} {conns:7d}  {per}")
            for kind in sorted(t1["requests"]):
                c = t1["requests"][kind] - t0["requests"].get(kind, 0)
                if not c:
                    continue
                answered = t1["answered"].get(kind, 0) - t0["answered"].get(kind, 0)
                secs = t1["answer_seconds"].get(kind, 0) - t0["answer_seconds"].get(kind, 0)
                mean = f"   answer in {secs / answered * 1000:6.1f} ms" if answered else ""
                per = f"{per_resync(c, n):10.2f}" if name == "quiet" else " " * 10
                p(f"        {kind:26} {c:7d}  {per}{mean}")
    p("    (topic creates and deletes go to the controller broker that metadata names, not through the proxy:"
      " the operator's log counts them)")
    text = "\n".join(out)
    print(text)
    with open(os.path.join(a.dir, "summary.txt"), "w") as f:
        f.write(text + "\n")


def span_ms(text):
    """A tracing-subscriber duration ("192µs", "2.01ms", "1.5s") in milliseconds."""
    text = text.strip()
    for unit, factor in (("ns", 1e-6), ("µs", 1e-3), ("us", 1e-3), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[:-len(unit)]) * factor
    return float(text)


def span_times(lines):
    """{span name: [milliseconds from open to close]} of the span-close events of a JSON log."""
    times = collections.defaultdict(list)
    for line in lines:
        if '"close"' not in line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("message") != "close" or "time.busy" not in event:
            continue
        name = (event.get("span") or {}).get("name", "?")
        times[name].append(span_ms(event["time.busy"]) + span_ms(event.get("time.idle", "0ns")))
    return times


def cmd_spans(a):
    with open(a.log, encoding="utf-8", errors="replace") as f:
        times = span_times(f)
    if not times:
        print("    no span closes in the log (run with SPAN_TIMES=1)")
        return
    print(f"    {'span':28s} {'count':>7s} {'mean ms':>9s} {'p50 ms':>8s} {'p90 ms':>8s} {'sum s':>8s}")
    for name in sorted(times, key=lambda n: -sum(times[n])):
        t = sorted(times[name])
        print(f"    {name:28s} {len(t):7d} {sum(t) / len(t):9.1f} {t[len(t) // 2]:8.1f} "
              f"{t[int(len(t) * 0.9)]:8.1f} {sum(t) / 1000:8.1f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def snap_args(p):
        p.add_argument("--kubeconfig", required=True)
        p.add_argument("--dir", required=True)
        p.add_argument("--stats-port", type=int, required=True)
        p.add_argument("--metrics-url", required=True)
        p.add_argument("--pid", type=int, required=True)

    p = sub.add_parser("proxy")
    p.add_argument("--kafka-upstream", required=True)
    p.add_argument("--clickhouse-upstream", required=True)
    p.add_argument("--ports-file", required=True)
    p.set_defaults(func=cmd_proxy)
    p = sub.add_parser("flowschemas")
    p.add_argument("--service-account", required=True, help="NAMESPACE/NAME")
    p.set_defaults(func=cmd_flowschemas)
    p = sub.add_parser("apf-wait")
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--account-kubeconfig", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--timeout", type=float, default=60)
    p.set_defaults(func=cmd_apf_wait)
    p = sub.add_parser("settle")
    p.add_argument("--metrics-url", required=True)
    p.add_argument("--quiet", type=float, default=5)
    p.add_argument("--timeout", type=float, default=90)
    p.set_defaults(func=cmd_settle)
    p = sub.add_parser("snapshot")
    snap_args(p)
    p.add_argument("--phase", required=True)
    p.set_defaults(func=cmd_snapshot)
    p = sub.add_parser("ramp")
    snap_args(p)
    for flag in ("--namespace", "--kafka", "--clickhouse", "--topic-prefix", "--database"):
        p.add_argument(flag, required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--monitoring", choices=sorted(MONITORING), default="on")
    p.add_argument("--timeout", type=float, default=900)
    p.set_defaults(func=cmd_ramp)
    p = sub.add_parser("delete")
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--timeout", type=float, default=600)
    p.set_defaults(func=cmd_delete)
    p = sub.add_parser("storage")
    for flag in ("--kafka", "--clickhouse", "--topic-prefix", "--database"):
        p.add_argument(flag, required=True)
    p.add_argument("--delete", action="store_true")
    p.set_defaults(func=cmd_storage)
    p = sub.add_parser("report")
    p.add_argument("--dir", required=True)
    p.add_argument("--label", default="")
    p.add_argument("--fleet", type=int, required=True, help="pipelines the operator watches (all namespaces)")
    p.add_argument("--resync", type=int, required=True)
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("spans")
    p.add_argument("--log", required=True)
    p.set_defaults(func=cmd_spans)
    a = ap.parse_args()
    try:
        a.func(a)
    except KeyboardInterrupt:  # Ctrl-C: bench/operator-scale cleans up
        sys.exit(130)


if __name__ == "__main__":
    main()

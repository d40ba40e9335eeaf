#!/usr/bin/env python3
"""dev/monitoring/pod_sd.py - Kubernetes pod discovery for the local Prometheus, through a file.

Debian builds Prometheus without Kubernetes service discovery (`kubernetes_sd_configs` is not in
its binary: its client library's dependencies are not packaged). This process stands in for it:
every few seconds it lists the pods of all namespaces (`kubectl get pods -A`) and writes, for
`file_sd_configs`, the targets Prometheus' `kubernetes_sd_configs` with `role: pod` would make,
with the same `__meta_kubernetes_*` labels (Prometheus 2.42's discovery/kubernetes/pod.go):

  - one target per declared container port (init containers too), __address__ <pod IP>:<port>,
    with __meta_kubernetes_pod_container_{name,image,init,port_name,port_number,port_protocol};
    a container without ports gives one target, __address__ <pod IP>, without the port labels;
  - for every target: __meta_kubernetes_namespace, __meta_kubernetes_pod_{name,ip,uid,phase,ready,
    node_name,host_ip,controller_kind,controller_name}, __meta_kubernetes_pod_label_<name> and
    _labelpresent_<name>, __meta_kubernetes_pod_annotation_<name> and _annotationpresent_<name>
    (names with every character outside [a-zA-Z0-9_] made `_`);
  - pods without an IP yet are left out, as Prometheus does.

So the scrape jobs' relabel_configs are exactly those of a real cluster. The file is replaced
atomically (Prometheus notices at once through inotify) and only when it changes. When the API
server cannot be reached the last file stays, as Prometheus keeps its last discovered targets.

usage: KUBECONFIG=... pod_sd.py --out FILE [--interval S] [--once]
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

INVALID = re.compile(r"[^a-zA-Z0-9_]")


def now():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def log(msg):
    print(f"{now()} pod_sd.py: {msg}", file=sys.stderr, flush=True)


def sanitize(name):
    return INVALID.sub("_", name)


def lv(b):
    return "true" if b else "false"


def join_host_port(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def pod_labels(pod):
    md, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
    labels = {
        "__meta_kubernetes_namespace": md.get("namespace", ""),
        "__meta_kubernetes_pod_name": md.get("name", ""),
        "__meta_kubernetes_pod_ip": status.get("podIP", ""),
        "__meta_kubernetes_pod_ready": "unknown",
        "__meta_kubernetes_pod_phase": status.get("phase", ""),
        "__meta_kubernetes_pod_node_name": spec.get("nodeName", ""),
        "__meta_kubernetes_pod_host_ip": status.get("hostIP", ""),
        "__meta_kubernetes_pod_uid": md.get("uid", ""),
    }
    for c in status.get("conditions") or []:
        if c.get("type") == "Ready":
            labels["__meta_kubernetes_pod_ready"] = c.get("status", "Unknown").lower()
    for ref in md.get("ownerReferences") or []:
        if ref.get("controller"):
            labels["__meta_kubernetes_pod_controller_kind"] = ref.get("kind", "")
            labels["__meta_kubernetes_pod_controller_name"] = ref.get("name", "")
            break
    for k, v in (md.get("labels") or {}).items():
        labels[f"__meta_kubernetes_pod_label_{sanitize(k)}"] = v
        labels[f"__meta_kubernetes_pod_labelpresent_{sanitize(k)}"] = "true"
    for k, v in (md.get("annotations") or {}).items():
        labels[f"__meta_kubernetes_pod_annotation_{sanitize(k)}"] = v
        labels[f"__meta_kubernetes_pod_annotationpresent_{sanitize(k)}"] = "true"
    return labels


def pod_targets(pod):
    """The target groups of one pod, one per target (their labels differ by container and port)."""
    ip = pod.get("status", {}).get("podIP", "")
    if not ip:
        return []
    common = pod_labels(pod)
    spec = pod.get("spec", {})
    groups = []
    containers = [(c, False) for c in spec.get("containers") or []] + [(c, True) for c in spec.get("initContainers") or []]
    for c, init in containers:
        base = dict(common)
        base["__meta_kubernetes_pod_container_name"] = c.get("name", "")
        base["__meta_kubernetes_pod_container_image"] = c.get("image", "")
        base["__meta_kubernetes_pod_container_init"] = lv(init)
        ports = c.get("ports") or []
        if not ports:
            groups.append({"targets": [ip], "labels": base})
            continue
        for p in ports:
            labels = dict(base)
            labels["__meta_kubernetes_pod_container_port_name"] = p.get("name", "")
            labels["__meta_kubernetes_pod_container_port_number"] = str(p.get("containerPort", ""))
            labels["__meta_kubernetes_pod_container_port_protocol"] = p.get("protocol", "TCP")
            groups.append({"targets": [join_host_port(ip, p.get("containerPort", ""))], "labels": labels})
    return groups


def discover():
    r = subprocess.run(["kubectl", "--request-timeout=10s", "get", "pods", "-A", "-o", "json"], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip() or f"kubectl exited with {r.returncode}")
    pods = sorted(json.loads(r.stdout).get("items", []), key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"]))
    return [g for pod in pods for g in pod_targets(pod)]


def write(path, groups):
    """Replace the file if its content changes; True when it did."""
    content = json.dumps(groups, indent=1, sort_keys=True) + "\n"
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == content:
                return False
    except FileNotFoundError:
        pass
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(content)
    os.replace(tmp, path)
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="the file_sd file to write (JSON)")
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--once", action="store_true")
    a = ap.parse_args()
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    if not os.path.exists(a.out):
        write(a.out, [])
    if a.once:
        write(a.out, discover())
        return
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    log(f"discovering pods into {a.out} every {a.interval:g}s")
    last_error, last_count = None, None
    while not stopping:
        try:
            groups = discover()
            if write(a.out, groups) or last_error:
                pods = len({g["labels"]["__meta_kubernetes_pod_uid"] for g in groups})
                if (pods, len(groups)) != last_count or last_error:
                    log(f"{len(groups)} targets from {pods} pods")
                    last_count = (pods, len(groups))
            last_error = None
        except Exception as e:  # noqa: BLE001 - keep the last targets, retry next round
            if str(e) != last_error:
                log(f"cannot list pods; keeping the last targets: {e}")
                last_error = str(e)
        deadline = time.time() + a.interval
        while not stopping and time.time() < deadline:
            time.sleep(0.2)
    log("stopped")


if __name__ == "__main__":
    main()

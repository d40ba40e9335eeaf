#!/usr/bin/env python3
"""dev/k8s/node.py - a local node for the dev stack: runs the pods scheduled onto it as local processes.

It registers the Node `flightline-local` and keeps it Ready. For each pod bound to it, it runs every
container's `command` + `args` as a process with the container's environment (`env` values,
`secretKeyRef`, `configMapKeyRef`, `fieldRef`, `envFrom` ConfigMaps and Secrets), reports the pod
Running, probes the container's readiness endpoint and reports Ready like a kubelet, restarts
exited processes with back-off, and on pod deletion stops the process (SIGTERM, then SIGKILL after
the grace period) before removing the pod.

The one liberty it takes: each pod gets its own loopback address (127.0.1.N) as its pod IP, and an
env value `0.0.0.0:PORT` becomes `<pod IP>:PORT`, so that many pods can listen on the same port on
one host. Binaries are looked up on PATH (dev/stack puts the workspace's target dir first).
No images, no cgroups, no volumes: this is for the services of this repository only.

usage: KUBECONFIG=... node.py --state DIR
"""
import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone

NODE = "flightline-local"
# Pod IPs are PREFIX.2-254; a second stack on the same machine (a try stack) sets another prefix.
POD_IP_PREFIX = os.environ.get("FLIGHTLINE_POD_IP_PREFIX", "127.0.1")
# The version this stand-in reports as its kubelet's: the control plane's (dev/stack passes it).
K8S_VERSION = os.environ.get("K8S_VERSION", "1.35.4")


def now():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def log(msg):
    print(f"{now()} node.py: {msg}", file=sys.stderr, flush=True)


def kubectl(*args, body=None, check=True):
    r = subprocess.run(["kubectl", "--request-timeout=10s", *args], input=body, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args[:3])}: {r.stderr.strip()}")
    return r.stdout


def get_json(*args):
    return json.loads(kubectl(*args, "-o", "json"))


def register_node():
    node = {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE, "kubernetes.io/os": "linux",
                                              "kubernetes.io/arch": "amd64", "flightline.dev/local-node": "true"}},
    }
    kubectl("apply", "-f", "-", body=json.dumps(node))
    post_node_status()


def post_node_status():
    t = now()
    status = {"status": {
        "capacity": {"cpu": "64", "memory": "256Gi", "pods": "250"},
        "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "250"},
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": NODE}],
        "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": f"v{K8S_VERSION}-flightline-local",
                     "kubeProxyVersion": "none", "containerRuntimeVersion": "process://local", "kernelVersion": os.uname().release,
                     "osImage": "local processes", "machineID": "", "systemUUID": "", "bootID": ""},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "node.py runs pods as local processes",
                        "lastHeartbeatTime": t, "lastTransitionTime": t}],
    }}
    kubectl("patch", "node", NODE, "--subresource=status", "--type=strategic", "-p", json.dumps(status))
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
             "metadata": {"name": NODE, "namespace": "kube-node-lease"},
             "spec": {"holderIdentity": NODE, "leaseDurationSeconds": 40,
                      "renewTime": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}}
    kubectl("apply", "-f", "-", body=json.dumps(lease))


class Pods:
    def __init__(self, state):
        self.state = state
        self.running = {}  # uid -> dict(proc, ip, ready, restarts, pod, next_start, reported)
        self.ips = set()
        os.makedirs(os.path.join(state, "pods"), exist_ok=True)

    def allocate_ip(self):
        for n in range(2, 255):
            ip = f"{POD_IP_PREFIX}.{n}"
            if ip not in self.ips:
                self.ips.add(ip)
                return ip
        raise RuntimeError("no free pod IPs")

    def env_for(self, pod, container, ip):
        ns = pod["metadata"]["namespace"]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
        cache = {}

        def obj(kind, name):
            key = (kind, name)
            if key not in cache:
                cache[key] = get_json("get", kind, name, "-n", ns)
            return cache[key]

        def data(kind, name, key):
            o = obj(kind, name)
            if kind == "secret":
                return base64.b64decode(o.get("data", {})[key]).decode()
            return o.get("data", {})[key]

        for src in container.get("envFrom", []):
            if "configMapRef" in src:
                env.update(obj("configmap", src["configMapRef"]["name"]).get("data", {}))
            if "secretRef" in src:
                for k, v in obj("secret", src["secretRef"]["name"]).get("data", {}).items():
                    env[k] = base64.b64decode(v).decode()
        for e in container.get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"]
            elif "valueFrom" in e:
                vf = e["valueFrom"]
                if "secretKeyRef" in vf:
                    env[e["name"]] = data("secret", vf["secretKeyRef"]["name"], vf["secretKeyRef"]["key"])
                elif "configMapKeyRef" in vf:
                    env[e["name"]] = data("configmap", vf["configMapKeyRef"]["name"], vf["configMapKeyRef"]["key"])
                elif "fieldRef" in vf:
                    path = vf["fieldRef"]["fieldPath"]
                    env[e["name"]] = {"metadata.name": pod["metadata"]["name"], "metadata.namespace": ns,
                                      "status.podIP": ip, "spec.nodeName": NODE}.get(path, "")
            else:
                env[e["name"]] = ""
        # A pod's network is its own IP: bind what would bind all interfaces to the pod IP.
        return {k: (v.replace("0.0.0.0:", f"{ip}:") if isinstance(v, str) else v) for k, v in env.items()}

    def start(self, uid, entry):
        pod = entry["pod"]
        container = pod["spec"]["containers"][0]
        argv = list(container.get("command", [])) + list(container.get("args", []))
        name = f"{pod['metadata']['namespace']}_{pod['metadata']['name']}"
        logf = open(os.path.join(self.state, "pods", f"{name}.log"), "ab")
        try:
            env = self.env_for(pod, container, entry["ip"])
            entry["proc"] = subprocess.Popen(argv, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
            entry["error"] = None
            log(f"started {name}: {' '.join(argv)} (pid {entry['proc'].pid}, ip {entry['ip']})")
        except Exception as e:  # noqa: BLE001 - reported on the pod, retried with back-off
            entry["proc"] = None
            entry["error"] = str(e)
            log(f"cannot start {name}: {e}")
        finally:
            logf.close()

    def probe(self, entry):
        container = entry["pod"]["spec"]["containers"][0]
        probe = container.get("readinessProbe", {}).get("httpGet")
        proc = entry.get("proc")
        if proc is None or proc.poll() is not None:
            return False
        if not probe:
            return True
        port = probe.get("port")
        if isinstance(port, str):
            port = next((p["containerPort"] for p in container.get("ports", []) if p.get("name") == port), 8080)
        try:
            with urllib.request.urlopen(f"http://{entry['ip']}:{port}{probe.get('path', '/')}", timeout=1) as r:
                return 200 <= r.status < 400
        except Exception:  # noqa: BLE001 - any failure means not ready
            return False

    def report(self, uid, entry):
        pod = entry["pod"]
        proc = entry.get("proc")
        alive = proc is not None and proc.poll() is None
        ready = entry["ready"]
        state_key = (alive, ready, entry["restarts"], entry.get("error"))
        if entry.get("reported") == state_key:
            return
        t = now()
        container = pod["spec"]["containers"][0]
        if alive:
            cstate = {"running": {"startedAt": entry["started_at"]}}
        else:
            cstate = {"waiting": {"reason": "CrashLoopBackOff" if entry["restarts"] else "ContainerCreating",
                                  "message": entry.get("error") or "process exited"}}
        cond = lambda type_, ok: {"type": type_, "status": "True" if ok else "False", "lastTransitionTime": t}  # noqa: E731
        status = {"status": {
            "phase": "Running", "hostIP": "127.0.0.1", "podIP": entry["ip"], "podIPs": [{"ip": entry["ip"]}],
            "startTime": entry["started_at"],
            "conditions": [cond("PodScheduled", True), cond("Initialized", True), cond("ContainersReady", ready), cond("Ready", ready)],
            "containerStatuses": [{"name": container["name"], "ready": ready, "started": alive, "restartCount": entry["restarts"],
                                   "image": container.get("image", ""), "imageID": "", "containerID": f"process://{proc.pid if proc else 0}",
                                   "state": cstate}],
        }}
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        r = subprocess.run(["kubectl", "--request-timeout=10s", "-n", ns, "patch", "pod", name, "--subresource=status",
                            "--type=merge", "-p", json.dumps(status)], capture_output=True, text=True)
        if r.returncode == 0:
            entry["reported"] = state_key

    def stop(self, uid, grace):
        entry = self.running.pop(uid, None)
        if not entry:
            return
        proc = entry.get("proc")
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass
        self.ips.discard(entry["ip"])

    def sync(self):
        pods = get_json("get", "pods", "-A", "--field-selector", f"spec.nodeName={NODE}")["items"]
        seen = set()
        for pod in pods:
            uid = pod["metadata"]["uid"]
            seen.add(uid)
            if pod["metadata"].get("deletionTimestamp"):
                if uid in self.running:
                    log(f"stopping {pod['metadata']['namespace']}/{pod['metadata']['name']}")
                self.stop(uid, pod["spec"].get("terminationGracePeriodSeconds", 30))
                kubectl("-n", pod["metadata"]["namespace"], "delete", "pod", pod["metadata"]["name"],
                        "--grace-period=0", "--force", "--wait=false", check=False)
                continue
            entry = self.running.get(uid)
            if entry is None:
                entry = {"pod": pod, "ip": self.allocate_ip(), "ready": False, "restarts": 0, "proc": None,
                         "started_at": now(), "next_start": 0.0, "backoff": 1.0}
                self.running[uid] = entry
                self.start(uid, entry)
            else:
                entry["pod"] = pod
                proc = entry.get("proc")
                if (proc is None or proc.poll() is not None) and time.time() >= entry["next_start"]:
                    if proc is not None:
                        entry["restarts"] += 1
                        log(f"{pod['metadata']['name']} exited with {proc.returncode}; restarting")
                    entry["next_start"] = time.time() + entry["backoff"]
                    entry["backoff"] = min(entry["backoff"] * 2, 30.0)
                    self.start(uid, entry)
            entry["ready"] = self.probe(entry)
            if entry["ready"]:
                entry["backoff"] = 1.0
            self.report(uid, entry)
        for uid in list(self.running):
            if uid not in seen:
                self.stop(uid, 5)

    def stop_all(self):
        for uid in list(self.running):
            self.stop(uid, 10)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--state", required=True)
    ap.add_argument("--interval", type=float, default=1.0)
    a = ap.parse_args()
    pods = Pods(a.state)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    register_node()
    last_status = time.time()
    log(f"node {NODE} ready")
    while not stopping:
        try:
            if time.time() - last_status > 10:
                post_node_status()
                last_status = time.time()
            pods.sync()
        except Exception as e:  # noqa: BLE001 - a failed round is retried on the next one
            log(f"sync failed: {e}")
        time.sleep(a.interval)
    log("stopping every pod process")
    pods.stop_all()


if __name__ == "__main__":
    main()

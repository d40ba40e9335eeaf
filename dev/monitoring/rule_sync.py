#!/usr/bin/env python3
"""dev/monitoring/rule_sync.py - plays prometheus-operator's part for PrometheusRule objects on the
local stack: keeps the local Prometheus' rules directory equal to the PrometheusRules in the cluster.

Every few seconds it lists `prometheusrules.monitoring.coreos.com` in all namespaces (no CRD: no
rules) and, for each object, writes its `spec` - which is exactly a Prometheus rule file, `{groups:
[...]}` - to RULES_DIR/<namespace>_<name>.yaml (as JSON, which is valid YAML). A new or changed file
is checked with `promtool check rules` first: a bad one is logged and not installed (the object's
previous file goes too, as prometheus-operator drops an invalid rule), so Prometheus never loads it.
The new and changed files of a round are checked in one promtool run (at fleet scale a round brings
hundreds: one process each cost more CPU than the API server's work for them); only when that run
fails is each checked alone, to find the bad ones.
Files of deleted objects are removed. When anything changed it POSTs PROMETHEUS_URL/-/reload.

A round waits at least the interval, and ten times as long as its list took (at most 30 s): at fleet
scale (1,000 PrometheusRules, megabytes a list) listing every 3 s cost the API server more CPU than
the operator's whole work (prometheus-operator watches instead).

Only files named <namespace>_<name>.yaml belong to it (Kubernetes names cannot hold `_`): a file
without `_` in its name (e.g. dev-stack.yaml) is a static rule file and is left alone. When the API
server cannot be reached, it changes nothing and tries again.

usage: KUBECONFIG=... rule_sync.py --rules-dir DIR --prometheus-url URL [--promtool PATH] [--interval S] [--once]
"""
import argparse
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

RESOURCE = "prometheusrules.monitoring.coreos.com"
MANAGED = re.compile(r"^[a-z0-9][a-z0-9.-]*_[a-z0-9][a-z0-9.-]*\.yaml$")
LIST_COST_FACTOR = 10  # a round waits at least ten times as long as its list took...
MAX_WAIT = 30.0  # ...but never longer than this
CHECK_BATCH = 256  # files per promtool run: a command line has a limit
NO_CRD = ("the server doesn't have a resource type", "could not find the requested resource")


def now():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def log(msg):
    print(f"{now()} rule_sync.py: {msg}", file=sys.stderr, flush=True)


class Unavailable(Exception):
    """The API server did not answer the list: change nothing this round."""


def list_rules():
    """{file name: (namespace/name, spec)} of every PrometheusRule; {} when the CRD is missing."""
    r = subprocess.run(["kubectl", "--request-timeout=10s", "get", RESOURCE, "-A", "-o", "json"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        if any(s in r.stderr for s in NO_CRD):
            return {}
        raise Unavailable(r.stderr.strip() or f"kubectl exited with {r.returncode}")
    out = {}
    for item in json.loads(r.stdout).get("items", []):
        md = item.get("metadata", {})
        ns, name = md.get("namespace", "default"), md.get("name", "")
        out[f"{ns}_{name}.yaml"] = (f"{ns}/{name}", item.get("spec") or {})
    return out


def rule_file(spec):
    """The rule file for a PrometheusRule spec: its groups, `expr` always a string (the CRD allows
    int-or-string)."""
    groups = []
    for g in spec.get("groups") or []:
        g = dict(g)
        rules = []
        for rule in g.get("rules") or []:
            rule = dict(rule)
            if "expr" in rule and not isinstance(rule["expr"], str):
                rule["expr"] = str(rule["expr"])
            rules.append(rule)
        g["rules"] = rules
        groups.append(g)
    return json.dumps({"groups": groups}, indent=2, sort_keys=True) + "\n"


class Syncer:
    def __init__(self, rules_dir, prometheus_url, promtool):
        self.dir = rules_dir
        self.url = prometheus_url.rstrip("/")
        self.promtool = promtool
        self.rejected = {}  # file name -> sha256 of content promtool refused (logged once)
        self.reload_pending = False
        self.last_error = None
        self.list_seconds = 0.0  # how long the last list took
        os.makedirs(self.dir, exist_ok=True)

    def read(self, name):
        try:
            with open(os.path.join(self.dir, name), encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def tmp(self, name):
        """Where a file waits for its check: not ending in .yaml, so Prometheus' glob never sees it."""
        return os.path.join(self.dir, f".{name}.tmp")

    def promtool_check(self, paths):
        return subprocess.run([self.promtool, "check", "rules", *paths], capture_output=True, text=True)

    def check_all(self, contents):
        """{name: None when valid and installed, else promtool's complaint} for {name: content}:
        one promtool run for all; each alone only when that run fails."""
        for name, content in contents.items():
            with open(self.tmp(name), "w", encoding="utf-8") as f:
                f.write(content)
        names = sorted(contents)
        errors = {}
        try:
            for start in range(0, len(names), CHECK_BATCH):
                batch = names[start:start + CHECK_BATCH]
                if self.promtool_check([self.tmp(n) for n in batch]).returncode == 0:
                    errors.update(dict.fromkeys(batch))
                    continue
                for name in batch:
                    r = self.promtool_check([self.tmp(name)])
                    out = (r.stderr.strip() or r.stdout.strip()).replace(self.tmp(name), name)
                    errors[name] = (" ".join(line.strip() for line in out.splitlines() if line.strip())
                                    if r.returncode != 0 else None)
            for name in names:
                if errors[name] is None:
                    os.replace(self.tmp(name), os.path.join(self.dir, name))
        finally:
            for name in names:
                if os.path.exists(self.tmp(name)):
                    os.unlink(self.tmp(name))
        return errors

    def remove(self, name, why):
        try:
            os.unlink(os.path.join(self.dir, name))
            log(f"removed {name} ({why})")
            return True
        except FileNotFoundError:
            return False

    def sync(self):
        started = time.monotonic()
        try:
            wanted = list_rules()
            self.list_seconds = time.monotonic() - started
        except Unavailable as e:
            if str(e) != self.last_error:
                log(f"cannot list {RESOURCE}; keeping the rule files as they are: {e}")
                self.last_error = str(e)
            return False
        if self.last_error is not None:
            log(f"listing {RESOURCE} works again")
            self.last_error = None
        changed = False
        new = {}
        for name, (obj, spec) in sorted(wanted.items()):
            content = rule_file(spec)
            if self.read(name) == content:
                continue
            if self.rejected.get(name) == hashlib.sha256(content.encode()).hexdigest():
                continue
            new[name] = content
        for name, error in sorted(self.check_all(new).items()):
            obj, content = wanted[name][0], new[name]
            if error:
                self.rejected[name] = hashlib.sha256(content.encode()).hexdigest()
                log(f"PrometheusRule {obj} is not a valid rule file; not loading it: {error}")
                changed |= self.remove(name, f"PrometheusRule {obj} is invalid")
                continue
            self.rejected.pop(name, None)
            groups = json.loads(content)["groups"]
            n = sum(len(g.get("rules") or []) for g in groups)
            log(f"wrote {name} (PrometheusRule {obj}: {len(groups)} groups, {n} rules)")
            changed = True
        for name in sorted(os.listdir(self.dir)):
            if MANAGED.match(name) and name not in wanted:
                changed |= self.remove(name, "its PrometheusRule is gone")
            elif name.startswith(".") and name.endswith(".tmp"):
                os.unlink(os.path.join(self.dir, name))
        for name in list(self.rejected):
            if name not in wanted:
                del self.rejected[name]
        if changed:
            self.reload_pending = True
        if self.reload_pending:
            self.reload()
        return changed

    def reload(self):
        req = urllib.request.Request(f"{self.url}/-/reload", data=b"", method="POST")
        try:
            with urllib.request.urlopen(req, timeout=15):
                pass
            self.reload_pending = False
            files = sorted(n for n in os.listdir(self.dir) if n.endswith(".yaml"))
            log(f"reloaded Prometheus ({len(files)} rule files)")
        except urllib.error.HTTPError as e:
            log(f"Prometheus refused the reload ({e.code}): {e.read().decode(errors='replace').strip()}")
        except (urllib.error.URLError, OSError) as e:
            log(f"cannot reach Prometheus to reload ({e}); retrying next round")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rules-dir", required=True)
    ap.add_argument("--prometheus-url", required=True)
    ap.add_argument("--promtool", default="promtool")
    ap.add_argument("--interval", type=float, default=3.0)
    ap.add_argument("--once", action="store_true", help="one round, then exit")
    a = ap.parse_args()
    syncer = Syncer(a.rules_dir, a.prometheus_url, a.promtool)
    if a.once:
        syncer.sync()
        return
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    log(f"syncing {RESOURCE} into {a.rules_dir} every {a.interval:g}s (Prometheus {a.prometheus_url})")
    while not stopping:
        try:
            syncer.sync()
        except Exception as e:  # noqa: BLE001 - a failed round is retried on the next one
            log(f"sync failed: {e}")
        deadline = time.time() + max(a.interval, min(MAX_WAIT, LIST_COST_FACTOR * syncer.list_seconds))
        while not stopping and time.time() < deadline:
            time.sleep(0.2)
    log("stopped")


if __name__ == "__main__":
    main()

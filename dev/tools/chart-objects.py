#!/usr/bin/env python3
"""dev/tools/chart-objects.py - helpers of dev/lint-chart and dev/chart-install over rendered manifests.

  chart-objects.py split RENDERED --crd FILE|DIR... --crs OUT --builtin OUT
      Splits the documents of RENDERED into custom resources (a kind one of the CRDs serves) and
      the rest (built-in kinds and the CRDs themselves), for validate-crs.py and kubernetes-validate.
      Checks every object of the chart's templates carries the standard labels (Helm's
      app.kubernetes.io/{name,instance,version,component,managed-by=Helm}, helm.sh/chart); CRDs are
      exempt (they are copied verbatim from crds/). Prints one line per object; exit 1 on a problem.
  chart-objects.py sources RENDERED...
      Prints the template paths that produced at least one object (the `# Source:` lines).
  chart-objects.py same A B [--a-path .x.y] [--b-path .x.y]
      Compares two YAML files (one document each) as data, optionally a sub-tree of each (.a.b.0:
      list items by index);
      exit 1 with a unified diff of their normalised form when they differ.
  chart-objects.py pick RENDERED KIND [--exclude]
      Prints the documents of one kind (or all others with --exclude), e.g. to apply the Deployment last.
Needs PyYAML (the tools venv of dev/install-tools).
"""
import argparse
import difflib
import os
import re
import sys

import yaml

STANDARD_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                   "app.kubernetes.io/component", "app.kubernetes.io/managed-by", "helm.sh/chart")


def documents(path):
    """(source, text, object) of each non-empty document, `# Source:` taken from helm-py's output."""
    with open(path) as fh:
        text = fh.read()
    out = []
    for chunk in re.split(r"^---\s*$", text, flags=re.M):
        obj = yaml.safe_load(chunk)
        if not obj:
            continue
        m = re.search(r"^# Source: (\S+)", chunk, flags=re.M)
        out.append((m.group(1) if m else "?", chunk.strip(), obj))
    return out


def served_kinds(paths):
    kinds = set()
    for p in paths:
        files = [os.path.join(r, n) for r, _, ns in os.walk(p) for n in ns if n.endswith((".yaml", ".yml"))] \
            if os.path.isdir(p) else [p]
        for f in files:
            with open(f) as fh:
                for d in yaml.safe_load_all(fh):
                    if d and d.get("kind") == "CustomResourceDefinition":
                        for v in d["spec"]["versions"]:
                            kinds.add((f"{d['spec']['group']}/{v['name']}", d["spec"]["names"]["kind"]))
    return kinds


def split(a):
    kinds = served_kinds(a.crd)
    crs, builtin, problems = [], [], 0
    for source, text, obj in documents(a.rendered):
        key = (obj.get("apiVersion"), obj.get("kind"))
        name = f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"
        if obj.get("kind") != "CustomResourceDefinition":
            labels = (obj.get("metadata") or {}).get("labels") or {}
            missing = [label for label in STANDARD_LABELS if label not in labels]
            if labels.get("app.kubernetes.io/managed-by", "Helm") != "Helm":
                missing.append("app.kubernetes.io/managed-by=Helm")
            if missing:
                print(f"FAIL labels {name} ({source}): missing {', '.join(missing)}")
                problems += 1
        (crs if key in kinds else builtin).append(f"---\n{text}\n")
        print(f"     {'custom resource' if key in kinds else 'built-in'}: {name} ({source})")
    with open(a.crs, "w") as fh:
        fh.write("".join(crs))
    with open(a.builtin, "w") as fh:
        fh.write("".join(builtin))
    return 1 if problems else 0


def sources(a):
    seen = sorted({source for f in a.rendered for source, _, _ in documents(f)})
    print("\n".join(seen))
    return 0


def subtree(doc, path):
    for part in [p for p in (path or "").split(".") if p]:
        if isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        elif isinstance(doc, dict) and part in doc:
            doc = doc[part]
        else:
            raise SystemExit(f"no {path} in the document")
    return doc


def same(a):
    with open(a.a) as fa, open(a.b) as fb:
        x = subtree(yaml.safe_load(fa), a.a_path)
        y = subtree(yaml.safe_load(fb), a.b_path)
    if x == y:
        return 0
    dump = lambda d: yaml.safe_dump(d, sort_keys=True, width=1000).splitlines(keepends=True)  # noqa: E731
    sys.stdout.writelines(difflib.unified_diff(dump(x), dump(y), f"{a.a}{a.a_path or ''}", f"{a.b}{a.b_path or ''}"))
    return 1


def pick(a):
    for _, text, obj in documents(a.rendered):
        if (obj.get("kind") == a.kind) != a.exclude:
            print(f"---\n{text}")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split")
    s.add_argument("rendered")
    s.add_argument("--crd", action="append", required=True)
    s.add_argument("--crs", required=True)
    s.add_argument("--builtin", required=True)
    s = sub.add_parser("sources")
    s.add_argument("rendered", nargs="+")
    s = sub.add_parser("same")
    s.add_argument("a")
    s.add_argument("b")
    s.add_argument("--a-path")
    s.add_argument("--b-path")
    s = sub.add_parser("pick")
    s.add_argument("rendered")
    s.add_argument("kind")
    s.add_argument("--exclude", action="store_true")
    a = ap.parse_args()
    sys.exit({"split": split, "sources": sources, "same": same, "pick": pick}[a.cmd](a))


if __name__ == "__main__":
    main()

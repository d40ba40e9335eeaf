#!/usr/bin/env python3
"""dev/tools/validate-crs.py - validate custom resources offline against their CRDs' openAPIV3Schema.

usage: validate-crs.py --crd CRD.yaml|DIR [--crd ...] [--require-schema] MANIFEST.yaml ...

Each document of the manifests whose apiVersion and kind a CRD (apiextensions.k8s.io/v1) serves is
checked against that version's schema, translated to JSON Schema draft-07 the way the API server
reads it: x-kubernetes-int-or-string, nullable, x-kubernetes-preserve-unknown-fields. Unknown fields
are errors (like `kubectl apply --validate=strict`) unless preserve-unknown-fields allows them.
Documents of other kinds are skipped, or errors with --require-schema. metadata.name is required.
Prints OK/ERROR per object and "N passed, N failed"; exits 1 on any failure.
Needs PyYAML and jsonschema (the tools venv of dev/install-tools).
"""
import argparse
import os
import sys

import jsonschema
import yaml


def to_jsonschema(s):
    if not isinstance(s, dict):
        return s
    s = dict(s)
    if s.pop("x-kubernetes-int-or-string", False):
        s.pop("type", None)
        s.pop("anyOf", None)
        s["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if s.pop("nullable", False) and "type" in s:
        s["type"] = [s["type"], "null"]
    preserve = s.pop("x-kubernetes-preserve-unknown-fields", False)
    for k in [k for k in s if k.startswith("x-kubernetes-")]:
        s.pop(k)
    if "properties" in s:
        s["properties"] = {k: to_jsonschema(v) for k, v in s["properties"].items()}
        if "additionalProperties" not in s and not preserve:
            s["additionalProperties"] = False
    for k in ("items", "additionalProperties", "not"):
        if isinstance(s.get(k), dict):
            s[k] = to_jsonschema(s[k])
    for k in ("allOf", "anyOf", "oneOf"):
        if k in s:
            s[k] = [to_jsonschema(x) for x in s[k]]
    return s


def crd_files(paths):
    for p in paths:
        if os.path.isdir(p):
            for root, _, names in sorted(os.walk(p)):
                for n in sorted(names):
                    if n.endswith((".yaml", ".yml")):
                        yield os.path.join(root, n)
        else:
            yield p


def load_schemas(paths):
    schemas = {}
    for f in crd_files(paths):
        with open(f) as fh:
            for d in yaml.safe_load_all(fh):
                if not d or d.get("kind") != "CustomResourceDefinition":
                    continue
                sp = d["spec"]
                for v in sp["versions"]:
                    sch = to_jsonschema(v.get("schema", {}).get("openAPIV3Schema", {"type": "object"}))
                    sch.setdefault("properties", {}).update({
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object", "required": ["name"],
                                     "properties": {"name": {"type": "string", "minLength": 1}}},
                    })
                    sch["required"] = sorted(set(sch.get("required", [])) | {"apiVersion", "kind", "metadata"})
                    schemas[(f"{sp['group']}/{v['name']}", sp["names"]["kind"])] = sch
    return schemas


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--crd", action="append", required=True, help="CRD file or directory (repeatable)")
    ap.add_argument("--require-schema", action="store_true", help="a document no CRD describes is an error")
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    schemas = load_schemas(a.crd)
    if not schemas:
        print(f"ERROR no CustomResourceDefinition in {', '.join(a.crd)}")
        sys.exit(1)
    fails = checked = 0
    for f in a.files:
        with open(f) as fh:
            docs = list(yaml.safe_load_all(fh))
        for d in docs:
            if not d:
                continue
            key = (d.get("apiVersion"), d.get("kind"))
            name = f"{f}: {d.get('kind')}/{(d.get('metadata') or {}).get('name')}"
            if key not in schemas:
                if a.require_schema:
                    print(f"ERROR {name}: no CRD serves {key[0]} {key[1]}")
                    fails += 1
                    checked += 1
                continue
            checked += 1
            errs = sorted(jsonschema.Draft7Validator(schemas[key]).iter_errors(d), key=lambda e: list(e.path))
            for e in errs:
                print(f"ERROR {name}: {'.'.join(map(str, e.path)) or '<root>'}: {e.message}")
            if errs:
                fails += 1
            else:
                print(f"OK {name}")
    print(f"{checked - fails} passed, {fails} failed")
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Vendor the Kubernetes Job schema that test/k8s/manifests.test.ts validates examples/kubernetes/ against.

Source: the PyPI package kubernetes-validate 1.37.0 (Apache-2.0, github.com/willthames/kubernetes-validate),
which ships the JSON schemas of the Kubernetes API generated from its OpenAPI document (the
kubernetes-json-schema layout), here the "-local-strict" variant for Kubernetes v1.37.0: strict means
additionalProperties is false, so a misspelt field fails validation. Of its _definitions.json
(1.8 MB, 862 definitions) only the definitions a Job reaches are kept; nothing else is changed.

Run: python3 test/k8s/vendor_job_schema.py   (downloads the wheel with pip; the test itself needs no network)
"""
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "kubernetes-validate==1.37.0"
KUBERNETES = "v1.37.0-local-strict"
HERE = Path(__file__).resolve().parent / "schema"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", PACKAGE, "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("kubernetes_validate-*.whl"))
        base = f"kubernetes_validate/kubernetes-json-schema/{KUBERNETES}/"
        with zipfile.ZipFile(wheel) as z:
            job = json.loads(z.read(base + "job-batch-v1.json"))
            definitions = json.loads(z.read(base + "_definitions.json"))
    defs = definitions["$defs"]
    wanted: set[str] = set()
    todo = [m for m in re.findall(r'#/\$defs/([^"]+)"', json.dumps(job))]
    while todo:
        name = todo.pop()
        if name in wanted:
            continue
        wanted.add(name)
        todo.extend(re.findall(r'#/\$defs/([^"]+)"', json.dumps(defs[name])))
    pruned = {**definitions, "$defs": {k: defs[k] for k in sorted(wanted)}}
    HERE.mkdir(exist_ok=True)
    (HERE / "job-batch-v1.json").write_text(json.dumps(job, indent=1, sort_keys=True) + "\n")
    (HERE / "_definitions.json").write_text(json.dumps(pruned, indent=1, sort_keys=True) + "\n")
    (HERE / "SOURCE").write_text(
        f"{PACKAGE} (PyPI, Apache-2.0, github.com/willthames/kubernetes-validate): "
        f"kubernetes-json-schema/{KUBERNETES}/job-batch-v1.json and the {len(wanted)} of "
        f"{len(defs)} definitions in _definitions.json that a Job reaches. Made by vendor_job_schema.py.\n"
    )
    print(f"kept {len(wanted)} of {len(defs)} definitions")


if __name__ == "__main__":
    main()

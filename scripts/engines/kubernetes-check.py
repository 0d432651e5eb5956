#!/usr/bin/env python3
"""Check the Kubernetes examples without a cluster: validate them against the schemas, then
run their pods here as the controllers would start them.

usage: kubernetes-check.py [--run WORKER --data DIR --out DIR] MANIFEST...

1. Schemas. Core kinds (Service, Job) are validated with kubernetes-validate (PyPI; it ships
   the Kubernetes OpenAPI schemas), strict: unknown fields are errors. A PyTorchJob is
   validated against the training-operator's CRD schema (examples/kubernetes/schema/
   pytorchjob-v1.json, strict as well), each replica's pod template against Kubernetes' own
   PodTemplateSpec, and against the rules of the operator's admission webhook (Master/Worker
   only, a container named "pytorch" with an image, one Master).
2. With --run: every pod's command runs as a local process with the environment its
   controller gives it: an Indexed Job's completion index through the pod's fieldRef; a
   PyTorchJob's MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK, PET_* as training-operator v1.9
   sets them (pkg/controller.v1/pytorch/envvar.go, master.go). Only what a cluster provides
   and this machine cannot is replaced, and printed: MASTER_ADDR (a cluster DNS name) becomes
   127.0.0.1, MASTER_PORT a free port here, the image's --data and --path folders DIR and
   OUT/<pod>, the image's `mnist-worker` WORKER. Arguments after `--` are appended to every
   pod's args (e.g. --threads 1).

Prints one PASS/FAIL line per manifest and check; exits 1 on any failure, 2 on bad usage.
"""
import argparse
import copy
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

# The oldest Kubernetes whose Indexed Jobs set the completion index annotation the examples
# read (1.28 also sets JOB_COMPLETION_INDEX), and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.28", kubernetes_validate.utils.latest_version())
HERE = Path(__file__).resolve().parent
CRD_SCHEMA = HERE.parent.parent / "examples/kubernetes/schema/pytorchjob-v1.json"
INDEX_ANNOTATION = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def strict(schema):
    """The schema with unknown fields refused wherever it lists the known ones (what
    `kubectl apply --validate=strict` does for a CRD), except where the CRD keeps them."""
    s = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(s)
    return s


def core(doc, what):
    """Errors of a core-kind document against Kubernetes' schemas (strict), per version."""
    errors = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.absolute_path) or "(top)"
            errors.append(f"{what}: Kubernetes {version}: {path}: {e.message} (the first error)")
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(f"{what}: {e.message}")
    return errors


def pytorchjob(doc, what):
    """Errors of a PyTorchJob: CRD schema, pod templates, the operator's webhook rules."""
    crd = json.loads(CRD_SCHEMA.read_text())
    errors = []
    if doc.get("apiVersion") != f"{crd['group']}/{crd['version']}":
        errors.append(f"{what}: apiVersion {doc.get('apiVersion')!r}, the CRD serves {crd['group']}/{crd['version']}")
    v = jsonschema.Draft7Validator(strict(crd["openAPIV3Schema"]))
    for e in sorted(v.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(p) for p in e.absolute_path) or "(top)"
        errors.append(f"{what}: {path}: {e.message}")
    name = doc.get("metadata", {}).get("name", "")
    if not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", name):
        errors.append(f"{what}: metadata.name {name!r} is not a DNS-1035 label")
    specs = doc.get("spec", {}).get("pytorchReplicaSpecs") or {}
    if not specs:
        errors.append(f"{what}: spec.pytorchReplicaSpecs: must be required")
    for role, rs in specs.items():
        where = f"{what}: spec.pytorchReplicaSpecs[{role}]"
        if role not in ("Master", "Worker"):
            errors.append(f"{where}: replica type not supported (Master, Worker)")
        template = (rs or {}).get("template", {})
        errors += core(
            {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"{name}-{role.lower()}"}, "template": template},
            f"{where}.template",
        )
        containers = template.get("spec", {}).get("containers") or []
        if not containers:
            errors.append(f"{where}.template.spec.containers: must be specified")
        for i, c in enumerate(containers):
            if not c.get("image"):
                errors.append(f"{where}.template.spec.containers[{i}].image: must be required")
        if not any(c.get("name") == "pytorch" for c in containers):
            errors.append(f"{where}.template.spec.containers: must have at least one container with name pytorch")
        replicas = (rs or {}).get("replicas")
        if role == "Master" and replicas != 1:
            errors.append(f"{where}.replicas: must be 1")
        if role != "Master" and replicas is not None and replicas < 1:
            errors.append(f"{where}.replicas: must be at least 1")
    return errors


def validate(docs, path):
    """(check name, errors) for every document of one manifest."""
    results = []
    for doc in docs:
        what = f"{path} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc.get("kind") == "PyTorchJob":
            results.append((f"{what} (training-operator v1.9.0 CRD schema, core/v1 PodTemplateSpec, webhook rules)", pytorchjob(doc, what)))
        else:
            results.append((f"{what} (kubernetes-validate {kubernetes_validate.__version__}, Kubernetes {' and '.join(K8S_VERSIONS)}, strict)", core(doc, what)))
    return results


def container_env(c, index):
    """A container's own env, with the completion index fieldRef resolved."""
    env = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == INDEX_ANNOTATION:
            env[e["name"]] = str(index)
        else:
            raise SystemExit(f"kubernetes-check: env {e['name']}: only values and the completion index are simulated")
    return env


def pods(docs):
    """(pod name, container, env) of every pod the manifest's controllers would create."""
    out = []
    for doc in docs:
        name = doc["metadata"]["name"]
        if doc["kind"] == "Job":
            spec = doc["spec"]
            if spec.get("completionMode") != "Indexed":
                raise SystemExit(f"kubernetes-check: Job {name}: only Indexed Jobs are simulated")
            for i in range(spec["completions"]):
                (c,) = spec["template"]["spec"]["containers"]
                env = container_env(c, i)
                env["JOB_COMPLETION_INDEX"] = str(i)  # Kubernetes ≥ 1.28 sets it too
                out.append((f"{name}-{i}", c, env))
        elif doc["kind"] == "PyTorchJob":
            specs = doc["spec"]["pytorchReplicaSpecs"]
            total = sum(rs.get("replicas", 1) for rs in specs.values())
            master = specs["Master"]["template"]["spec"]["containers"]
            port = next(p["containerPort"] for c in master if c["name"] == "pytorch" for p in c.get("ports", []) if p.get("name") == "pytorchjob-port")
            addr = f"{name}-master-0"
            for role in ("Master", "Worker"):
                for i in range(specs.get(role, {}).get("replicas", 0)):
                    (c,) = [c for c in specs[role]["template"]["spec"]["containers"] if c["name"] == "pytorch"]
                    rank = i + 1 if role == "Worker" else i
                    env = container_env(c, i)
                    env.update(PYTHONUNBUFFERED="1", MASTER_PORT=str(port), PET_MASTER_PORT=str(port), MASTER_ADDR=addr,
                               PET_MASTER_ADDR=addr, WORLD_SIZE=str(total), RANK=str(rank), PET_NODE_RANK=str(rank),
                               PET_NNODES=str(total))
                    out.append((f"{name}-{role.lower()}-{i}", c, env))
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(path, docs, worker, data, out, extra, timeout=300):
    """Run the manifest's pods here; errors (empty: passed)."""
    ps = pods(docs)
    if not ps:
        return [f"{path}: no pods"]
    port = str(free_port())
    procs = []
    for pod, c, env in ps:
        argv = list(c.get("command", [])) + list(c.get("args", []))
        if argv[:1] != ["mnist-worker"]:
            return [f"{path}: pod {pod} runs {argv[:1]}, not mnist-worker"]
        argv[0] = str(worker)
        for flag, value in (("--data", str(data)), ("--path", str(out / pod))):
            if flag in argv:
                argv[argv.index(flag) + 1] = value
        argv += extra
        here = dict(env)
        replaced = []
        if "MASTER_ADDR" in here:
            replaced.append(f"MASTER_ADDR {here['MASTER_ADDR']} -> 127.0.0.1")
            here["MASTER_ADDR"] = "127.0.0.1"
        if "MASTER_PORT" in here:
            replaced.append(f"MASTER_PORT {here['MASTER_PORT']} -> {port}")
            here["MASTER_PORT"] = port
        shown = " ".join(f"{k}={v}" for k, v in sorted(env.items()))
        print(f"  pod {pod}: env {shown}; here: {', '.join(replaced)}", flush=True)
        log = open(out / f"{pod}.out", "w")
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "PMI_", "MNIST_", "TORCHELASTIC_")) and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")}
        procs.append((pod, subprocess.Popen(argv, env={**base, **here}, stdout=log, stderr=subprocess.STDOUT), log))
    errors = []
    deadline = time.monotonic() + timeout
    for pod, p, log in procs:
        try:
            rc = p.wait(max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            rc = "killed after the deadline"
        log.close()
        text = (out / f"{pod}.out").read_text()
        first = next((l for l in text.splitlines() if " | " in l), "(no log line)")
        print(f"  pod {pod}: exit {rc}; first line: {first}", flush=True)
        test = [l for l in text.splitlines() if "| Test set:" in l]
        if test:
            print(f"  pod {pod}: {test[-1]}", flush=True)
        if rc != 0:
            errors.append(f"{path}: pod {pod} exited {rc}:\n{text[-2000:]}")
        elif "Worker environment:" not in first:
            errors.append(f"{path}: pod {pod}'s first line is not the environment line")
    if not any("| Test set:" in (out / f"{pod}.out").read_text() for pod, _, _ in procs):
        errors.append(f"{path}: no pod tested the model")
    return errors


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("manifests", nargs="+", type=Path)
    ap.add_argument("--run", type=Path, metavar="WORKER", help="run the pods with this mnist-worker")
    ap.add_argument("--data", type=Path)
    ap.add_argument("--out", type=Path)
    argv = sys.argv[1:]
    extra = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[: argv.index("--")]
    a = ap.parse_args(argv)
    if a.run and not (a.data and a.out):
        ap.error("--run needs --data and --out")
    failed = False
    for path in a.manifests:
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        except (OSError, yaml.YAMLError) as e:
            print(f"FAIL {path}: cannot read: {e}")
            failed = True
            continue
        for check, errors in validate(docs, path):
            print(f"{'PASS' if not errors else 'FAIL'} schema {check}")
            for e in errors:
                print(f"  {e}")
            failed |= bool(errors)
        if a.run:
            out = a.out / path.stem
            out.mkdir(parents=True, exist_ok=True)
            print(f"run {path}: its pods as local processes", flush=True)
            errors = run(path, docs, a.run, a.data, out, extra)
            print(f"{'PASS' if not errors else 'FAIL'} run {path}")
            for e in errors:
                print(f"  {e}")
            failed |= bool(errors)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

"""Offline checks of what deploy/ ships, run by scripts/test (full runs).

- Every Kubernetes object of the base and the local overlay validates against the
  Kubernetes API schemas that kubernetes-validate (PyPI) bundles, strictly (no unknown
  fields); KEDA's kinds against KEDA's schemas (npm's @kubernetes-models/keda, through
  deploy/keda-schema.mjs), and compose.yaml against the Compose Specification's schema
  (check-jsonschema's, PyPI). The schemas come with those packages at test time; none
  is copied into the repository.
- The pieces agree with each other and with the Procfile: every process runs one of the
  Procfile's commands, workers get more grace than JOB_SHUTDOWN_TIMEOUT_MS, the
  autoscaler targets the worker Deployment with the secret the pods use, and the compose
  file's services refer only to services it defines.

Usage: python deploy/check.py   (from the repository's root, with kubernetes-validate
       and check-jsonschema in the interpreter's environment, and @kubernetes-models/keda
       in .tools/node_modules: scripts/test installs them)
"""

import json
import pathlib
import re
import subprocess
import sys

import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.30.0"
failures = []


def fail(message):
    failures.append(message)


def documents(path):
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def procfile_commands():
    commands = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if ":" in line:
            name, command = line.split(":", 1)
            commands[name.strip()] = command.split()
    return commands


def kustomization_objects(directory):
    """The objects a kustomization lists as resources (recursively), and its patches."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    objects = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        if path.is_dir():
            objects += kustomization_objects(path)
        else:
            objects += [(path, doc) for doc in documents(path)]
    for patch in kustomization.get("patches", []):
        if not (directory / patch["path"]).is_file():
            fail(f"{directory}: patch {patch['path']} is missing")
    return objects


def check_kubernetes(objects):
    keda = []
    for path, obj in objects:
        if obj.get("apiVersion", "").startswith("keda.sh/"):
            keda.append(obj)
            continue
        name = f"{path.relative_to(ROOT)}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            fail(f"{name}: {error.message} at {'/'.join(map(str, error.path))}")
    check_keda(keda)


def check_keda(objects):
    validator = subprocess.run(
        ["node", str(DEPLOY / "keda-schema.mjs"), str(ROOT / ".tools" / "node_modules")],
        input=json.dumps(objects), capture_output=True, text=True,
    )
    for line in validator.stdout.splitlines():
        fail(f"KEDA: {line}")
    if validator.returncode and not validator.stdout:
        fail(f"KEDA: the schema check did not run: {validator.stderr.strip()}")
    for obj in objects:
        if obj["kind"] == "ScaledObject":
            for trigger in obj["spec"].get("triggers", []):
                if trigger.get("type") == "postgresql":
                    # KEDA's schema leaves a trigger's metadata free-form; its scaler needs these.
                    for key in ("query", "targetQueryValue"):
                        if not trigger.get("metadata", {}).get(key):
                            fail(f"KEDA: the postgresql trigger needs metadata.{key}")


def check_consistency(objects, procfile):
    by_kind = {}
    for _, obj in objects:
        by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    shutdown_ms = int(by_kind["ConfigMap"]["rsolv-config"]["data"]["JOB_SHUTDOWN_TIMEOUT_MS"])
    allowed = list(procfile.values())
    for kind in ("Deployment", "Job"):
        for name, obj in by_kind.get(kind, {}).items():
            pod = obj["spec"]["template"]["spec"]
            for container in pod["containers"]:
                if container.get("command") not in allowed:
                    fail(f"{kind}/{name}: runs {container.get('command')}, not a Procfile command")
    worker = by_kind["Deployment"]["rsolv-worker"]["spec"]["template"]["spec"]
    if worker.get("terminationGracePeriodSeconds", 30) * 1000 <= shutdown_ms:
        fail("rsolv-worker: terminationGracePeriodSeconds must exceed JOB_SHUTDOWN_TIMEOUT_MS")
    scaled = by_kind["ScaledObject"]["rsolv-worker"]["spec"]
    if scaled["scaleTargetRef"]["name"] not in by_kind["Deployment"]:
        fail("the ScaledObject targets no Deployment of ours")
    auth = by_kind["TriggerAuthentication"]
    for trigger in scaled["triggers"]:
        if trigger["authenticationRef"]["name"] not in auth:
            fail("the ScaledObject's authenticationRef names no TriggerAuthentication")


def check_compose(procfile):
    schema = subprocess.run(
        [str(pathlib.Path(sys.executable).with_name("check-jsonschema")), "--builtin-schema",
         "vendor.compose-spec", str(DEPLOY / "compose.yaml")],
        capture_output=True, text=True,
    )
    if schema.returncode:
        fail(f"compose: not valid against the Compose Specification: {schema.stdout}{schema.stderr}".strip())
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    commands = list(procfile.values())
    for name, service in services.items():
        for dependency in service.get("depends_on", []):
            if dependency not in services:
                fail(f"compose: {name} depends on {dependency}, which is not a service")
        if service.get("image", "").startswith("rsolv") and service.get("command") not in commands:
            fail(f"compose: {name} runs {service.get('command')}, not a Procfile command")
    shutdown_ms = int(compose["x-rsolv-env"]["JOB_SHUTDOWN_TIMEOUT_MS"])
    grace = re.fullmatch(r"(\d+)s", services["worker"]["stop_grace_period"])
    if not grace or int(grace.group(1)) * 1000 <= shutdown_ms:
        fail("compose: the worker's stop_grace_period must exceed JOB_SHUTDOWN_TIMEOUT_MS")
    if services["worker"].get("deploy", {}).get("replicas") != 3:
        fail("compose: three workers")


def check_dockerfile(procfile):
    cmd = re.search(r'^CMD \[(.*)\]$', (DEPLOY / "Dockerfile").read_text(), re.M)
    if not cmd or [part.strip().strip('"') for part in cmd.group(1).split(",")] != procfile["web"]:
        fail("Dockerfile: CMD must be the Procfile's web command")


def main():
    procfile = procfile_commands()
    objects = kustomization_objects(DEPLOY / "k8s" / "overlays" / "local")
    check_kubernetes(objects)
    check_consistency(objects, procfile)
    check_compose(procfile)
    check_dockerfile(procfile)
    for failure in failures:
        print(f"deploy: {failure}", file=sys.stderr)
    print(f"deploy: {len(objects)} Kubernetes objects (KEDA's included), compose and Dockerfile checked; "
          f"{len(failures)} problems")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

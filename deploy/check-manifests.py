#!/usr/bin/env python3
"""Checks what the Kubernetes manifests promise beyond their schemas: the probes, and a pod
that the Pod Security Standards' "restricted" profile admits. Exits 1 naming each gap."""

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent / "kubernetes"
ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                   "persistentVolumeClaim", "projected", "secret"}


def documents():
    for path in sorted(ROOT.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.name, doc


def restricted(where, pod, gaps):
    """The restricted profile (Kubernetes 1.25+), field by field."""
    pod_ctx = pod.get("securityContext", {})
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        gaps.append(f"{where}: shares a host namespace")
    if pod_ctx.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
        gaps.append(f"{where}: the pod sets no RuntimeDefault seccomp profile")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            gaps.append(f"{where}: volume {volume['name']} is of a kind restricted refuses")
    for container in pod.get("initContainers", []) + pod.get("containers", []):
        ctx = container.get("securityContext", {})
        name = f"{where} container {container['name']}"
        if not (ctx.get("runAsNonRoot") or pod_ctx.get("runAsNonRoot")):
            gaps.append(f"{name}: may run as root")
        if ctx.get("runAsUser", pod_ctx.get("runAsUser")) == 0:
            gaps.append(f"{name}: runs as uid 0")
        if ctx.get("allowPrivilegeEscalation") is not False:
            gaps.append(f"{name}: allows privilege escalation")
        if ctx.get("privileged"):
            gaps.append(f"{name}: is privileged")
        if ctx.get("capabilities", {}).get("drop") != ["ALL"]:
            gaps.append(f"{name}: does not drop every capability")
        if set(ctx.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            gaps.append(f"{name}: adds capabilities")
        if ctx.get("readOnlyRootFilesystem") is not True:
            gaps.append(f"{name}: has a writable root file system")
        if not container.get("resources", {}).get("limits", {}).get("memory"):
            gaps.append(f"{name}: has no memory limit")
        for port in container.get("ports", []):
            if "hostPort" in port:
                gaps.append(f"{name}: binds a host port")


def main():
    gaps = []
    kinds = {}
    for name, doc in documents():
        kinds.setdefault(doc["kind"], []).append(doc)
        template = doc.get("spec", {}).get("template", {}).get("spec")
        if template:
            restricted(f"{name} ({doc['kind']})", template, gaps)
    deployments = kinds.get("Deployment", [])
    if len(deployments) != 1:
        gaps.append("expected one Deployment")
    for deployment in deployments:
        spec = deployment["spec"]
        if spec.get("replicas", 1) < 2:
            gaps.append("the Deployment runs fewer than 2 replicas")
        server = spec["template"]["spec"]["containers"][0]
        probes = {
            "startupProbe": "/health",
            "readinessProbe": "/ready",
            "livenessProbe": "/health",
        }
        for probe, path in probes.items():
            got = server.get(probe, {}).get("httpGet", {}).get("path")
            if got != path:
                gaps.append(f"the {probe} asks {got!r}, not {path}")
        grace = spec["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        if grace <= 30:
            gaps.append("terminationGracePeriodSeconds does not exceed shutdown_timeout_seconds (30)")
    for kind in ("Job", "Service", "PodDisruptionBudget", "ConfigMap", "Secret"):
        if kind not in kinds:
            gaps.append(f"no {kind}")
    for service in kinds.get("Service", []):
        if any(port.get("port") == 9464 or port.get("targetPort") in (9464, "metrics")
               for port in service["spec"]["ports"]):
            gaps.append("the Service exposes /metrics")
    listed = yaml.safe_load((ROOT / "kustomization.yaml").read_text())["resources"]
    for path in ROOT.glob("*.yaml"):
        wanted = path.name not in ("kustomization.yaml", "secret.example.yaml")
        if wanted != (path.name in listed):
            gaps.append(f"kustomization.yaml {'misses' if wanted else 'applies'} {path.name}")
    for gap in gaps:
        print(f"deploy/kubernetes: {gap}", file=sys.stderr)
    if gaps:
        sys.exit(1)
    print(f"deploy/kubernetes: {sum(map(len, kinds.values()))} resources, probes and the "
          "restricted profile's rules hold")


if __name__ == "__main__":
    main()

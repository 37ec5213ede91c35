#!/usr/bin/env python3
"""Render and check deploy/kubernetes/ without kubectl (not packaged for Debian 12).

Loads kustomization.yaml, parses every resource, applies its namespace, checks that the
pieces fit together (namespaces, ServiceAccount, ConfigMap, Service selector and port,
ServiceMonitor selector and port name, probes' port), and prints the rendered stream.
Exits non-zero with a message on the first problem.
"""
import os
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
CLUSTER_SCOPED = {"Namespace"}


def fail(msg):
    sys.exit(f"check_kustomization: {msg}")


def main():
    kust = yaml.safe_load(open(os.path.join(HERE, "kustomization.yaml")))
    namespace = kust.get("namespace")
    docs = []
    for res in kust.get("resources", []):
        path = os.path.join(HERE, res)
        if not os.path.exists(path):
            fail(f"resource {res} listed but missing")
        for doc in yaml.safe_load_all(open(path)):
            if not doc:
                continue
            for key in ("apiVersion", "kind", "metadata"):
                if key not in doc:
                    fail(f"{res}: no {key}")
            if doc["kind"] not in CLUSTER_SCOPED:
                ns = doc["metadata"].get("namespace", namespace)
                if ns != namespace:
                    fail(f"{res}: namespace {ns!r}, expected {namespace!r}")
                doc["metadata"]["namespace"] = namespace
            docs.append(doc)

    def one(kind):
        found = [d for d in docs if d["kind"] == kind]
        if len(found) != 1:
            fail(f"expected one {kind}, found {len(found)}")
        return found[0]

    if one("Namespace")["metadata"]["name"] != namespace:
        fail("the Namespace object is not the kustomization's namespace")
    ds = one("DaemonSet")
    pod = ds["spec"]["template"]
    spec = pod["spec"]
    if spec.get("serviceAccountName") != one("ServiceAccount")["metadata"]["name"]:
        fail("DaemonSet serviceAccountName does not match the ServiceAccount")
    if not spec.get("hostPID"):
        fail("DaemonSet needs hostPID")
    labels = pod["metadata"]["labels"]
    if ds["spec"]["selector"]["matchLabels"].items() - labels.items():
        fail("DaemonSet selector does not match its pod labels")
    cm_names = {v["configMap"]["name"] for v in spec.get("volumes", []) if "configMap" in v}
    if cm_names != {one("ConfigMap")["metadata"]["name"]}:
        fail(f"DaemonSet mounts ConfigMaps {cm_names}, not the one defined")
    container = spec["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    for probe in ("livenessProbe", "readinessProbe"):
        port = container[probe]["httpGet"]["port"]
        if port not in ports and port not in ports.values():
            fail(f"{probe} uses unknown port {port}")
    sc = container["securityContext"]
    if sc.get("privileged"):
        fail("the agent must not run privileged")
    svc = one("Service")
    if svc["spec"]["selector"].items() - labels.items():
        fail("Service selector does not match the pod labels")
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    for p in svc_ports.values():
        if p.get("targetPort") not in ports and p.get("targetPort") not in ports.values():
            fail(f"Service targetPort {p.get('targetPort')} is not a container port")
    sm = one("ServiceMonitor")
    if sm["spec"]["selector"]["matchLabels"].items() - svc["metadata"]["labels"].items():
        fail("ServiceMonitor does not select the Service")
    for ep in sm["spec"]["endpoints"]:
        if ep["port"] not in svc_ports:
            fail(f"ServiceMonitor endpoint port {ep['port']} is not a Service port name")
    one("PrometheusRule")
    print(yaml.safe_dump_all(docs, sort_keys=False), end="")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Render and check deploy/kubernetes/ without kubectl (not packaged for Debian 12).

Loads kustomization.yaml, parses every resource, applies its namespace, checks that the
pieces fit together (namespaces, ServiceAccount, ConfigMap, Service selector and port,
ServiceMonitor selector and port name, probes' port, the fleet Secret mounted read-only
with mode 0400 where shared_secret_file points, a startupProbe, tracefs read-only, the
NetworkPolicy admitting only the metrics port from selected namespaces), and prints the
rendered stream.
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
    # Volumes and their sources (a projected volume has several).
    sources = []
    for v in spec.get("volumes", []):
        if "projected" in v:
            sources += [(v["name"], s) for s in v["projected"]["sources"]]
        else:
            sources.append((v["name"], v))
    cm_names = {s["configMap"]["name"] for _, s in sources if "configMap" in s}
    if cm_names != {one("ConfigMap")["metadata"]["name"]}:
        fail(f"DaemonSet mounts ConfigMaps {cm_names}, not the one defined")
    container = spec["containers"][0]
    mounts = {m["name"]: m for m in container.get("volumeMounts", [])}
    # The fleet secret: the Secret mounted read-only, owner-only, where the config says.
    secret = one("Secret")
    toml_text = one("ConfigMap")["data"]["observer.toml"]
    wanted = None
    for line in toml_text.splitlines():
        if line.strip().startswith("shared_secret_file"):
            wanted = line.split("=", 1)[1].strip().strip('"')
    if not wanted:
        fail("the ConfigMap sets no identity.shared_secret_file")
    found = False
    for name, s in sources:
        ref = s.get("secret")
        if not ref or ref.get("name", ref.get("secretName")) != secret["metadata"]["name"]:
            continue
        mount = mounts.get(name)
        if not mount or not mount.get("readOnly"):
            fail(f"volume {name} (the fleet Secret) is not mounted read-only")
        for item in ref.get("items", []):
            path = os.path.join(mount["mountPath"], item["path"])
            mode = item.get("mode", ref.get("defaultMode", 0o644))
            if path == wanted:
                if mode & 0o077:
                    fail(f"{path}: mode {mode:o} is readable by group or others")
                found = True
    if not found:
        fail(f"shared_secret_file {wanted} is not a mounted item of the Secret")
    # The fleet store's password, when mounted: optional (a cluster without [fleet] has
    # no such Secret), read-only, owner-only, where the config's example points.
    for name, s in sources:
        ref = s.get("secret")
        if not ref or ref.get("name") != "observer-fleet-store":
            continue
        if not ref.get("optional"):
            fail("the fleet store's password Secret must be optional")
        mount = mounts.get(name)
        if not mount or not mount.get("readOnly"):
            fail(f"volume {name} (the fleet store's password) is not mounted read-only")
        for item in ref.get("items", []):
            path = os.path.join(mount["mountPath"], item["path"])
            if item.get("mode", ref.get("defaultMode", 0o644)) & 0o077:
                fail(f"{path}: readable by group or others")
            if f'password_file = "{path}"' not in toml_text:
                fail(f"the ConfigMap's [fleet] example does not name {path}")
    if "startupProbe" not in container:
        fail("the container has no startupProbe")
    if container["startupProbe"]["httpGet"]["path"] != "/healthz":
        fail("the startupProbe does not ask /healthz")
    tracefs = [m for m in mounts.values() if m["mountPath"] == "/sys/kernel/tracing"]
    if not tracefs or not tracefs[0].get("readOnly"):
        fail("tracefs is not mounted read-only")
    # NetworkPolicy: ingress to the agent only on the metrics port, only from the
    # namespaces selected.
    np = one("NetworkPolicy")
    if np["spec"]["podSelector"]["matchLabels"].items() - labels.items():
        fail("the NetworkPolicy does not select the agent's pods")
    if "Ingress" not in np["spec"].get("policyTypes", []):
        fail("the NetworkPolicy does not restrict ingress")
    for rule in np["spec"].get("ingress", []):
        if not rule.get("from") or any("namespaceSelector" not in f for f in rule["from"]):
            fail("a NetworkPolicy ingress rule admits more than selected namespaces")
        metrics_port = {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"]
        for p in rule.get("ports") or [None]:
            if p is None or p["port"] not in ("metrics", metrics_port):
                fail("a NetworkPolicy ingress rule admits more than the metrics port")
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
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

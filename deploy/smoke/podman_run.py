#!/usr/bin/env python3
"""`podman run` arguments for one container of the rendered Kubernetes manifests (deploy/smoke.sh).

  podman_run.py RENDERED.yaml KIND/NAME --name CONTAINER_NAME --network NET [--ip IP]
      [--pvc CLAIM=HOSTDIR ...] [--secret NAME=HOSTDIR ...] [--scratch DIR]

Prints the arguments after `podman run` (one per line) that give the container what the pod
spec gives it, so the smoke test runs the manifests' settings rather than a hand-kept copy:

* the image, command and args; env values and `$(VAR)` references expanded as the kubelet does;
  downward-API values: metadata.name = --name, status.podIP = --ip, resource limits as numbers;
* the pod's runAsUser:runAsGroup, readOnlyRootFilesystem (without podman's extra tmpfs),
  dropped capabilities, allowPrivilegeEscalation=false as no-new-privileges;
* volumes: a ConfigMap rendered in the same file is written under --scratch and mounted; a
  Secret comes from the host folder given with --secret; a PersistentVolumeClaim from the host
  folder given with --pvc; an emptyDir is a tmpfs. readOnly mounts stay read-only.

* the livenessProbe as podman's health check: a `grpc` probe becomes `ringtrain health --addr
  http://127.0.0.1:PORT --service NAME` run inside the container (what the kubelet asks the
  pod's port), with the probe's timeoutSeconds and failureThreshold; `podman healthcheck run`
  runs it (no interval: podman's periodic checks need systemd timers, absent here).

Resource limits are not applied (this kernel's hybrid cgroups refuse them to runc). A field
this does not know how to map is an error naming it, so a manifest change cannot silently drop
a setting.
"""

import argparse
import json
import os
import re
import sys
from pathlib import Path

import yaml

VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(s, env):
    """The kubelet's `$(VAR)`: defined names are replaced, others stay as written."""
    return VAR.sub(lambda m: env.get(m.group(1), m.group(0)), s)


def cpu_number(q):
    q = str(q)
    return str(max(1, int(q[:-1]) // 1000)) if q.endswith("m") else str(int(float(q)))


def fail(msg):
    print(f"podman_run.py: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rendered")
    ap.add_argument("workload", help="KIND/NAME, e.g. Deployment/ringtrain-coordinator")
    ap.add_argument("--name", required=True)
    ap.add_argument("--network", required=True)
    ap.add_argument("--ip", default="")
    ap.add_argument("--pvc", action="append", default=[])
    ap.add_argument("--secret", action="append", default=[])
    ap.add_argument("--scratch", default="")
    a = ap.parse_args()

    with open(a.rendered, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    kind, _, name = a.workload.partition("/")
    found = [d for d in docs if d.get("kind") == kind and d["metadata"]["name"] == name]
    if not found:
        fail(f"{a.workload} is not in {a.rendered}")
    pod = found[0]["spec"]["template"]["spec"]
    if len(pod["containers"]) != 1 or pod.get("initContainers"):
        fail(f"{a.workload}: one container and no init containers expected")
    c = pod["containers"][0]
    pvcs = dict(x.split("=", 1) for x in a.pvc)
    secrets = dict(x.split("=", 1) for x in a.secret)
    configmaps = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "ConfigMap"}

    out = ["--name", a.name, "--hostname", a.name, "--network", a.network]
    if a.ip:
        out += ["--ip", a.ip]
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    user = csc.get("runAsUser", psc.get("runAsUser"))
    group = csc.get("runAsGroup", psc.get("runAsGroup"))
    if user is None:
        fail(f"{a.workload}: no runAsUser")
    out += ["--user", f"{user}:{group}" if group is not None else str(user)]
    if csc.get("readOnlyRootFilesystem"):
        out += ["--read-only", "--read-only-tmpfs=false"]
    for cap in csc.get("capabilities", {}).get("drop", []):
        out += ["--cap-drop", cap]
    for cap in csc.get("capabilities", {}).get("add", []):
        out += ["--cap-add", cap]
    if csc.get("allowPrivilegeEscalation") is False:
        out += ["--security-opt", "no-new-privileges"]

    env = {}
    limits = c.get("resources", {}).get("limits", {})
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = expand(str(e["value"]), env)
            continue
        src = e.get("valueFrom", {})
        if src.get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[e["name"]] = a.name
        elif src.get("fieldRef", {}).get("fieldPath") == "status.podIP":
            if not a.ip:
                fail(f"{a.workload}: env {e['name']} needs the pod IP: give --ip")
            env[e["name"]] = a.ip
        elif "resourceFieldRef" in src and src["resourceFieldRef"].get("resource") == "limits.cpu":
            env[e["name"]] = cpu_number(limits.get("cpu", "1"))
        else:
            fail(f"{a.workload}: env {e['name']}: cannot map {src}")
    for k, v in env.items():
        out += ["--env", f"{k}={v}"]

    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for m in c.get("volumeMounts", []):
        v = volumes.get(m["name"])
        if v is None:
            fail(f"{a.workload}: mount {m['name']} has no volume")
        mode = "ro" if m.get("readOnly") else "rw"
        path = m["mountPath"]
        if "emptyDir" in v:
            out += ["--tmpfs", f"{path}:rw,mode=1777"]
        elif "persistentVolumeClaim" in v:
            claim = v["persistentVolumeClaim"]["claimName"]
            if claim not in pvcs:
                fail(f"{a.workload}: claim {claim} (mount {path}): give --pvc {claim}=HOSTDIR")
            out += ["--volume", f"{os.path.abspath(pvcs[claim])}:{path}:{mode}"]
        elif "secret" in v:
            secret = v["secret"]["secretName"]
            if secret not in secrets:
                fail(f"{a.workload}: secret {secret} (mount {path}): give --secret {secret}=HOSTDIR")
            out += ["--volume", f"{os.path.abspath(secrets[secret])}:{path}:ro"]
        elif "configMap" in v:
            cm = configmaps.get(v["configMap"]["name"])
            if cm is None or not a.scratch:
                fail(f"{a.workload}: ConfigMap {v['configMap']['name']} not rendered or no --scratch")
            folder = Path(a.scratch) / f"configmap-{cm['metadata']['name']}"
            folder.mkdir(parents=True, exist_ok=True)
            for key, text in cm.get("data", {}).items():
                (folder / key).write_text(text, encoding="utf-8")
            out += ["--volume", f"{folder.resolve()}:{path}:ro"]
        else:
            fail(f"{a.workload}: volume {m['name']}: cannot map {sorted(v)}")

    probe = c.get("livenessProbe")
    if probe is not None:
        grpc = probe.get("grpc")
        if grpc is None:
            fail(f"{a.workload}: livenessProbe: cannot map {sorted(probe)} (grpc only)")
        check = [
            "/usr/local/bin/ringtrain", "health",
            "--addr", f"http://127.0.0.1:{grpc['port']}",
            "--service", grpc.get("service", ""),
            "--timeout-s", str(probe.get("timeoutSeconds", 1)),
        ]
        out += [
            "--health-cmd", json.dumps(check),
            "--health-timeout", f"{probe.get('timeoutSeconds', 1) + 1}s",
            "--health-retries", str(probe.get("failureThreshold", 3)),
            "--health-interval", "disable",
        ]

    command = c.get("command") or []
    args = [expand(x, env) for x in c.get("args", [])]
    if command:
        out += ["--entrypoint", command[0]]
    out.append(c["image"])
    out += [expand(x, env) for x in command[1:]] + args
    print("\n".join(out))


if __name__ == "__main__":
    main()

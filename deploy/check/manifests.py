#!/usr/bin/env python3
"""Checks on rendered Kubernetes manifests that a schema cannot make (run by deploy/check.sh).

  manifests.py policy RENDERED.yaml...
      Every pod: the restricted Pod Security settings, requests and limits on every container,
      no service-account token, explicit commands for ringtrain images, tagged images with a
      registry host (never a bare Docker Hub name); the
      checkpoint volume only on the coordinator, every other volume claim mounted read-only by
      training pods.

  manifests.py flags --bin-dir DIR RENDERED.yaml...
      Every container whose command is `ringtrain` or `ringtrain-worker`: its command line, as
      the kubelet would run it, is run with the real binary from DIR plus `--print-config`, which
      parses and validates it and exits (`data ...` subcommands get `--help`: parse only). The
      container's environment comes along with `$(VAR)` references expanded (downward-API values
      become stand-ins), and every path under one of its volume mounts points into a scratch
      folder instead: ConfigMaps rendered in the same file are written there (so `--config`
      reads the real job.toml), Secrets become stand-in files (a random token, a throw-away
      certificate). Then one world size per rendered file: the coordinator's effective
      `workers` (from its --print-config) must equal every worker Job's completions and
      parallelism.

One line per pod or container checked; a failure names the file, the object, the container and
the rule or the binary's message. Exit status 1 when anything failed.
"""

import argparse
import json
import math
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

BINARIES = ("ringtrain", "ringtrain-worker")
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod")
# Training pods, told apart by app.kubernetes.io/component; only the coordinator writes checkpoints.
CHECKPOINT_CLAIM = "ringtrain-checkpoints"
WRITER_COMPONENTS = {"coordinator": {CHECKPOINT_CLAIM}, "data": {"ringtrain-dataset"}}


def load(paths):
    """(file label, documents) for every rendered file."""
    out = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        out.append((Path(p).stem, docs))
    return out


def pod_templates(docs):
    """(label, pod metadata, pod spec) of every workload."""
    for d in docs:
        kind = d.get("kind")
        if kind not in WORKLOADS:
            continue
        label = f"{kind}/{d['metadata']['name']}"
        if kind == "Pod":
            yield label, d.get("metadata", {}), d.get("spec", {})
            continue
        spec = d.get("spec", {})
        if kind == "CronJob":
            spec = spec.get("jobTemplate", {}).get("spec", {})
        tpl = spec.get("template", {})
        yield label, tpl.get("metadata", {}), tpl.get("spec", {})


def containers(spec):
    return [("initContainer", c) for c in spec.get("initContainers", [])] + [
        ("container", c) for c in spec.get("containers", [])
    ]


def has_registry(image):
    """`localhost/x`, `registry.example.com/x`, `registry:5000/x`: the first component names a
    host. `ringtrain/worker` and `busybox` do not: they are Docker Hub's."""
    first, slash, _ = image.partition("/")
    return bool(slash) and (first == "localhost" or "." in first or ":" in first)


def image_repository(image):
    """`registry:5000/ringtrain/worker:0.1.0@sha256:...` -> `registry:5000/ringtrain/worker`."""
    name = image.split("@")[0]
    head, colon, tail = name.rpartition(":")
    return head if colon and "/" not in tail else name


def policy(files):
    failures = []
    for name, docs in files:
        for label, meta, spec in pod_templates(docs):
            where = f"{name}: {label}"
            bad = []
            psc = spec.get("securityContext", {})
            if psc.get("runAsNonRoot") is not True:
                bad.append("pod securityContext.runAsNonRoot is not true")
            for key in ("runAsUser", "runAsGroup"):
                if not isinstance(psc.get(key), int) or psc.get(key) == 0:
                    bad.append(f"pod securityContext.{key} is not a numeric non-root id")
            if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                bad.append("pod securityContext.seccompProfile.type is not RuntimeDefault")
            if spec.get("automountServiceAccountToken") is not False:
                bad.append("automountServiceAccountToken is not false")
            if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
                bad.append("uses a host namespace")
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            for v in volumes.values():
                if "hostPath" in v:
                    bad.append(f"volume {v['name']} is a hostPath")
            component = meta.get("labels", {}).get("app.kubernetes.io/component", "")
            writable_claims = WRITER_COMPONENTS.get(component, set())
            for kind, c in containers(spec):
                cw = f"{kind} {c.get('name')}"
                sc = c.get("securityContext", {})
                if sc.get("allowPrivilegeEscalation") is not False:
                    bad.append(f"{cw}: allowPrivilegeEscalation is not false")
                if sc.get("readOnlyRootFilesystem") is not True:
                    bad.append(f"{cw}: readOnlyRootFilesystem is not true")
                if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                    bad.append(f"{cw}: capabilities.drop does not hold ALL")
                if sc.get("capabilities", {}).get("add"):
                    bad.append(f"{cw}: adds capabilities")
                if sc.get("privileged"):
                    bad.append(f"{cw}: is privileged")
                res = c.get("resources", {})
                for side in ("requests", "limits"):
                    for r in ("cpu", "memory"):
                        if r not in res.get(side, {}):
                            bad.append(f"{cw}: no resources.{side}.{r}")
                image = c.get("image", "")
                if image_repository(image) == image.split("@")[0] and "@" not in image or image.endswith(":latest"):
                    bad.append(f"{cw}: image {image!r} has no fixed tag")
                if not has_registry(image):
                    bad.append(f"{cw}: image {image!r} names no registry host: Docker Hub's "
                               "namespace of that name could be anyone's (set one in the overlay's "
                               "`images:`)")
                if "ringtrain" in image_repository(image) and not c.get("command"):
                    bad.append(f"{cw}: ringtrain image without an explicit command")
                for m in c.get("volumeMounts", []):
                    v = volumes.get(m["name"], {})
                    claim = v.get("persistentVolumeClaim", {}).get("claimName")
                    if claim is None:
                        continue
                    if claim == CHECKPOINT_CLAIM and component != "coordinator":
                        bad.append(f"{cw}: mounts {CHECKPOINT_CLAIM} (only the coordinator may)")
                    if claim not in writable_claims and not m.get("readOnly"):
                        bad.append(f"{cw}: mounts claim {claim} read-write")
            if bad:
                failures += [f"{where}: {b}" for b in bad]
                for b in bad:
                    print(f"policy: FAIL {where}: {b}")
            else:
                print(f"policy: ok   {where}")
    return failures


# ---------------------------------------------------------------------------------------------
# flags


VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(s, env, unresolved):
    """Kubernetes' $(VAR) expansion: `$$` is a literal `$`, unknown names stay as written."""

    def sub(m):
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        if name in env:
            return env[name]
        unresolved.add(name)
        return m.group(0)

    return VAR.sub(sub, s)


def cpu_quantity(q):
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def downward(ref, container, pod_name):
    if "fieldRef" in ref:
        path = ref["fieldRef"]["fieldPath"]
        return {
            "metadata.name": pod_name,
            "metadata.namespace": "ringtrain-check",
            "status.podIP": "10.0.0.10",
            "status.hostIP": "10.0.0.1",
            "spec.nodeName": "node-0",
            "spec.serviceAccountName": "default",
        }.get(path, "stand-in")
    if "resourceFieldRef" in ref:
        r = ref["resourceFieldRef"]
        side, _, res = r["resource"].partition(".")
        value = container.get("resources", {}).get(side, {}).get(res)
        if res == "cpu" and value is not None:
            divisor = cpu_quantity(r.get("divisor", "1"))
            return str(max(1, math.ceil(cpu_quantity(value) / divisor)))
        return "1"
    return None


class Scratch:
    """Stand-ins for one container's mounts under a temporary folder."""

    def __init__(self, root, docs, spec, container, pem):
        self.root = root
        self.mounts = {}
        by_kind = {}
        for d in docs:
            by_kind.setdefault(d.get("kind"), {})[d["metadata"]["name"]] = d
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        self.problems = []
        # What the binary reads from the mounts, for recognising an identical invocation.
        self.fingerprint = []
        for i, m in enumerate(container.get("volumeMounts", [])):
            local = root / f"mount{i}-{m['name']}"
            local.mkdir(parents=True)
            v = volumes.get(m["name"])
            if v is None:
                self.problems.append(f"volumeMount {m['name']} names no volume")
                continue
            if "configMap" in v:
                name = v["configMap"]["name"]
                cm = by_kind.get("ConfigMap", {}).get(name)
                if cm is None:
                    self.problems.append(f"ConfigMap {name} is not in the rendered manifests")
                else:
                    data = cm.get("data", {})
                    self._write(local, data, v["configMap"].get("items"))
                    self.fingerprint.append((m["mountPath"], sorted(data.items())))
            elif "secret" in v:
                name = v["secret"]["secretName"]
                sec = by_kind.get("Secret", {}).get(name)
                keys = [it["key"] for it in v["secret"].get("items", [])]
                if sec is not None:
                    data = dict(sec.get("stringData", {}))
                    keys = keys or list(data) + list(sec.get("data", {}))
                # Secrets are made by hand (deploy/README.md): stand-ins with the right shape.
                data = {k: self._stand_in(k, pem) for k in keys}
                self._write(local, data, v["secret"].get("items"))
            self.mounts[m["mountPath"].rstrip("/") or "/"] = local

    @staticmethod
    def _stand_in(key, pem):
        if key.endswith((".crt", ".pem")) and pem:
            return pem["cert"]
        if key.endswith(".key") and pem:
            return pem["key"]
        return secrets.token_hex(32) + "\n"

    @staticmethod
    def _write(folder, data, items):
        paths = {it["key"]: it["path"] for it in items} if items else {k: k for k in data}
        for key, rel in paths.items():
            if key in data:
                p = folder / rel
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(data[key], encoding="utf-8")

    def unmap(self, text):
        """`text` with stand-in paths shown as the container's paths again."""
        for mount_path, local in sorted(self.mounts.items(), key=lambda m: -len(str(m[1]))):
            text = text.replace(str(local), mount_path)
        return text

    def map(self, s):
        """`s` with a leading mount path (also in `--flag=PATH`) replaced by its stand-in."""
        flag, eq, value = s.partition("=") if s.startswith("--") else ("", "", s)
        best = None
        for mp in self.mounts:
            if value == mp or value.startswith(mp + "/"):
                if best is None or len(mp) > len(best):
                    best = mp
        if best is None:
            return s
        value = str(self.mounts[best]) + value[len(best):]
        return f"{flag}{eq}{value}" if eq else value


def make_pem(folder):
    """A throw-away self-signed certificate and key (openssl), or None without openssl."""
    if shutil.which("openssl") is None:
        return None
    key, cert = folder / "key.pem", folder / "cert.pem"
    r = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=ringtrain-coordinator",
         "-addext", "subjectAltName=DNS:ringtrain-coordinator",
         "-keyout", str(key), "-out", str(cert)],
        capture_output=True,
    )
    if r.returncode != 0:
        return None
    return {"cert": cert.read_text(), "key": key.read_text()}


class Invocation:
    """One container's command line as the kubelet would run it, with stand-ins on this machine."""

    def __init__(self, root, docs, meta, spec, c, pem):
        command = c["command"]
        self.binary_name = os.path.basename(command[0])
        self.scratch = Scratch(root, docs, spec, c, pem)
        self.problems = list(self.scratch.problems)
        component = meta.get("labels", {}).get("app.kubernetes.io/component", "pod")
        raw, unresolved = {}, set()
        for e in c.get("env", []):
            if "value" in e:
                raw[e["name"]] = expand(e["value"], raw, unresolved)
            elif "valueFrom" in e:
                v = downward(e["valueFrom"], c, f"{component}-0-check")
                raw[e["name"]] = v if v is not None else "stand-in"
        # As in the container: the words with $(VAR) expanded, the environment by name.
        self.words = [expand(a, raw, unresolved) for a in command[1:] + c.get("args", [])]
        self.raw_env = raw
        if unresolved:
            names = "), $(".join(sorted(unresolved))
            self.problems.append(f"refers to $({names}), not defined in its env")
        # `data ...` has no --print-config: parse the command line only.
        self.extra = "--help" if self.words[:1] == ["data"] else "--print-config"
        self.root = root

    def shown(self):
        return " ".join([self.binary_name] + self.words)

    def key(self):
        """Equal for invocations that would behave the same (overlays share the base's)."""
        return repr((self.binary_name, self.words, sorted(self.raw_env.items()), self.scratch.fingerprint))

    def run(self, bin_dir):
        """(ok, the binary's message with stand-in paths shown as the container's paths, its
        stdout when it succeeded: the effective configuration)."""
        binary = Path(bin_dir).resolve() / self.binary_name
        if not binary.is_file():
            return False, f"{binary} is missing (build it: make build)"
        home = self.root / "home"
        home.mkdir(exist_ok=True)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "NO_COLOR": "1"}
        env.update({k: self.scratch.map(v) for k, v in self.raw_env.items()})
        argv = [str(binary)] + [self.scratch.map(w) for w in self.words] + [self.extra]
        try:
            r = subprocess.run(argv, cwd=self.root, env=env, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            return False, "did not exit within 120 s", ""
        if r.returncode == 0:
            return True, "", r.stdout
        lines = (r.stderr.strip() or r.stdout.strip()).splitlines()[-15:]
        return False, self.scratch.unmap(f"exit {r.returncode}: " + "\n".join(lines)), ""


def worker_jobs(docs):
    """(label, completions, parallelism) of every Job that runs ringtrain-worker."""
    for d in docs:
        if d.get("kind") != "Job":
            continue
        spec = d.get("spec", {})
        pod = spec.get("template", {}).get("spec", {})
        if any(os.path.basename((c.get("command") or [""])[0]) == "ringtrain-worker"
               for _, c in containers(pod)):
            yield f"Job/{d['metadata']['name']}", spec.get("completions"), spec.get("parallelism")


def world_size(name, docs, coordinator_workers):
    """One world size: the coordinator's effective `workers` (job.toml, env, flags) and every
    worker Job's completions and parallelism. A mismatch would wait out the join timeout."""
    stated = [(f"{label} (serve --print-config) workers", n) for label, n in coordinator_workers]
    for label, completions, parallelism in worker_jobs(docs):
        stated += [(f"{label} completions", completions), (f"{label} parallelism", parallelism)]
    if not stated:
        return []
    shown = ", ".join(f"{what} {n}" for what, n in stated)
    if len({n for _, n in stated}) > 1:
        print(f"flags: FAIL {name}: world size stated differently: {shown}")
        return [f"{name}: world size stated differently: {shown}"]
    print(f"flags: ok   {name}: world size {stated[0][1]} everywhere ({shown})")
    return []


def flags(files, bin_dir):
    failures = []
    seen = {}
    found = 0
    with tempfile.TemporaryDirectory(prefix="ringtrain-flags-") as tmp:
        tmp = Path(tmp)
        pem = make_pem(tmp)
        for name, docs in files:
            coordinator_workers = []
            for label, meta, spec in pod_templates(docs):
                for kind, c in containers(spec):
                    command = c.get("command") or []
                    if not command or os.path.basename(command[0]) not in BINARIES:
                        continue
                    found += 1
                    where = f"{name}: {label} {kind} {c['name']}"
                    inv = Invocation(tmp / f"c{found}", docs, meta, spec, c, pem)
                    if inv.problems:
                        for p in inv.problems:
                            failures.append(f"{where}: {p}")
                            print(f"flags: FAIL {where}: {p}")
                        continue
                    key = inv.key()
                    if key not in seen:
                        seen[key] = inv.run(bin_dir)
                    ok, detail, stdout = seen[key]
                    mode = "parse only" if inv.extra == "--help" else "--print-config"
                    if ok:
                        print(f"flags: ok   {where} ({mode}): {inv.shown()}")
                        if inv.binary_name == "ringtrain" and inv.words[:1] == ["serve"]:
                            try:
                                workers = json.loads(stdout).get("workers")
                            except ValueError:
                                workers = None
                            coordinator_workers.append((label, workers))
                        continue
                    failures.append(f"{where}: {detail.splitlines()[0]}")
                    print(f"flags: FAIL {where} ({mode}): {inv.shown()}")
                    for line in detail.splitlines():
                        print(f"flags:        {line}")
            failures += world_size(name, docs, coordinator_workers)
    if found == 0:
        failures.append("no ringtrain or ringtrain-worker container found")
        print("flags: FAIL no ringtrain or ringtrain-worker container found")
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("check", choices=["policy", "flags"])
    ap.add_argument("--bin-dir", default="target/release")
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    files = load(a.files)
    failures = policy(files) if a.check == "policy" else flags(files, a.bin_dir)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

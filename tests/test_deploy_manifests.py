"""Static checks of deploy/k8s (the manifests) and deploy/docker (the images).

Every manifest is validated against the Kubernetes JSON schemas that ``kubernetes-validate``
ships (no network), then the things a schema cannot see are checked: the pieces that must agree
with each other (ports, annotations, probes, the key files the configs name and the Secret's
items place, the Service names the configs dial) and the rules of deploy/README.md "Kubernetes".
``embedded_configs()`` returns the remembrall configs the ConfigMaps carry, for a test that loads
them with remembrall's own loader.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate  # the dev extra: it ships the schemas, nothing is fetched
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
DOCKER = ROOT / "deploy" / "docker"
NAMESPACE = "remembrall"
#: The oldest Kubernetes the manifests target, and the newest schema the package ships.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
PROM = {"prometheus.io/scrape": "true", "prometheus.io/path": "/metrics"}
IMAGE_UID = 10001


# ---------------------------------------------------------------------------- loading
@lru_cache(maxsize=1)
def _docs() -> tuple[tuple[str, dict[str, Any]], ...]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                out.append((path.name, doc))
    return tuple(out)


def manifests() -> list[dict[str, Any]]:
    """Every Kubernetes object in deploy/k8s/*.yaml."""
    return [doc for _, doc in _docs()]


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))


def find(kind: str, name: str) -> dict[str, Any]:
    hits = [d for d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind} {name}, found {len(hits)}"
    return hits[0]


def workloads() -> list[dict[str, Any]]:
    return [d for d in manifests() if d["kind"] in ("DaemonSet", "Deployment", "StatefulSet")]


def remembrall_workloads() -> list[dict[str, Any]]:
    return [w for w in workloads() if w["metadata"]["name"].startswith("remembrall-")]


def embedded_configs() -> dict[str, dict[str, Any]]:
    """The remembrall configs the ConfigMaps carry, by file name: ``{"edge.yaml": {...}, ...}``."""
    out: dict[str, dict[str, Any]] = {}
    for cm in (d for d in manifests() if d["kind"] == "ConfigMap"):
        for key, text in cm.get("data", {}).items():
            if key.endswith((".yaml", ".yml")):
                assert key not in out, f"{key} is in two ConfigMaps"
                out[key] = yaml.safe_load(text)
    return out


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (c,) = workload["spec"]["template"]["spec"]["containers"]
    return c


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def volume(workload: dict[str, Any], name: str) -> dict[str, Any]:
    (v,) = [v for v in pod_spec(workload)["volumes"] if v["name"] == name]
    return v


def mount_of(workload: dict[str, Any], volume_name: str) -> dict[str, Any]:
    (m,) = [m for m in container(workload)["volumeMounts"] if m["name"] == volume_name]
    return m


def arg_after(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


def secret_files(workload: dict[str, Any]) -> dict[str, str]:
    """File path in the container -> Secret key, for every Secret volume the container mounts."""
    out = {}
    for v in pod_spec(workload)["volumes"]:
        if "secret" not in v:
            continue
        base = PurePosixPath(mount_of(workload, v["name"])["mountPath"])
        for item in v["secret"]["items"]:
            out[str(base / item["path"])] = item["key"]
    return out


def edge() -> dict[str, Any]:
    return find("DaemonSet", "remembrall-edge")


def teacher() -> dict[str, Any]:
    return find("Deployment", "remembrall-teacher")


# ---------------------------------------------------------------------------- schemas
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schema(version: str) -> None:
    assert len(manifests()) >= 8
    for name, doc in _docs():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata'].get('name')}: {exc.message} "
                        f"at {'.'.join(map(str, exc.path))} (Kubernetes {version})")


def test_the_schema_check_catches_mistakes() -> None:
    bad = yaml.safe_load(yaml.safe_dump(edge()))
    pod_spec(bad)["runtimeClass"] = "nvidia"  # a misspelt field: strict rejects unknown keys
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)
    bad = yaml.safe_load(yaml.safe_dump(edge()))
    container(bad)["ports"][0]["containerPort"] = "9108"  # a string where an integer belongs
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)


def test_everything_is_in_the_namespace_and_named_once() -> None:
    seen = set()
    for doc in manifests():
        ident = (doc["kind"], doc["metadata"]["name"])
        assert ident not in seen, f"{ident} defined twice"
        seen.add(ident)
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == NAMESPACE
        else:
            assert doc["metadata"].get("namespace") == NAMESPACE, ident
    assert ("Namespace", NAMESPACE) in seen


# ---------------------------------------------------------------------------- kustomize
def test_kustomization_lists_every_manifest_and_generates_the_secret() -> None:
    k = kustomization()
    assert k["namespace"] == NAMESPACE
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(k["resources"]) == files
    (gen,) = k["secretGenerator"]
    assert gen["name"] == "remembrall-curve"
    keys = {PurePosixPath(f).name for f in gen["files"]}
    assert keys == {"teacher.key", "teacher.key_secret", "edge.key", "edge.key_secret"}
    assert all(PurePosixPath(f).parent == PurePosixPath("keys") for f in gen["files"])
    # no Secret manifest with real (or any) keys sits beside the generator
    assert not [d for d in manifests() if d["kind"] == "Secret"]
    # every Secret key a pod mounts is one the generator makes
    for w in remembrall_workloads():
        for path, key in secret_files(w).items():
            assert key in keys, f"{w['metadata']['name']} mounts {key} at {path}: not generated"
    # every remembrall image a pod names can be redirected to a registry by the kustomization
    images = {i["name"] for i in k["images"]}
    for w in remembrall_workloads():
        for c in pod_spec(w)["containers"] + pod_spec(w).get("initContainers", []):
            assert c["image"].rsplit(":", 1)[0] in images, c["image"]


def test_keys_folder_is_ignored_by_git() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for name in ("teacher.key", "teacher.key_secret", "edge.key", "edge.key_secret"):
        res = subprocess.run(["git", "check-ignore", "-q", f"deploy/k8s/keys/{name}"], cwd=ROOT, timeout=30)
        assert res.returncode == 0, f"deploy/k8s/keys/{name} would be committed"
    assert (K8S / "keys" / ".gitignore").exists()


def test_kustomize_build(tmp_path: Path) -> None:
    """``kubectl kustomize`` (where installed) builds the whole set with dummy keys, the Secret's
    hashed name reaches both pods, and the built objects validate too."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    for f in kustomization()["secretGenerator"][0]["files"]:
        (copy / f).write_text(f"dummy {f}\n", encoding="utf-8")
    res = subprocess.run([kubectl, "kustomize", str(copy)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    built = list(yaml.safe_load_all(res.stdout))
    (secret,) = [d for d in built if d["kind"] == "Secret"]
    assert secret["metadata"]["name"].startswith("remembrall-curve-")
    for d in built:
        kubernetes_validate.validate(d, K8S_VERSIONS[0], strict=True)
        if d["kind"] in ("DaemonSet", "Deployment") and d["metadata"]["name"].startswith("remembrall-"):
            names = {v["secret"]["secretName"] for v in d["spec"]["template"]["spec"]["volumes"] if "secret" in v}
            assert names == {secret["metadata"]["name"]}


# ---------------------------------------------------------------------------- pods
@pytest.mark.parametrize("name", ["remembrall-edge", "remembrall-teacher"])
def test_prometheus_annotations_ports_and_probes_agree(name: str) -> None:
    (w,) = [w for w in remembrall_workloads() if w["metadata"]["name"] == name]
    notes = w["spec"]["template"]["metadata"]["annotations"]
    for k, v in PROM.items():
        assert notes.get(k) == v, f"{name}: annotation {k}"
    c = container(w)
    (metrics,) = [p for p in c["ports"] if p["name"] == "metrics"]
    port = metrics["containerPort"]
    assert notes["prometheus.io/port"] == str(port)
    assert arg_after(c["args"], "--metrics-port") == str(port)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = c[probe]["httpGet"]
        assert get["port"] in ("metrics", port), f"{name}: {probe} on {get['port']}"
        assert get["path"] in ("/healthz", "/readyz")
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    res = c["resources"]
    assert res["requests"]["cpu"] and res["requests"]["memory"] and res["limits"]["memory"]
    # the image's user: the Secret's files (0440, group fsGroup) are readable to it
    sc = pod_spec(w)["securityContext"]
    assert sc["runAsUser"] == IMAGE_UID and sc["fsGroup"] == IMAGE_UID


def test_edge_daemonset() -> None:
    ds, cfg = edge(), embedded_configs()["edge.yaml"]
    spec, c = pod_spec(ds), container(ds)
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["nodeSelector"]["remembrall.io/edge"] == "true"
    assert c["args"][:8] == ["run", "/etc/remembrall/edge.yaml", "--out", "/var/lib/remembrall/out",
                             "--metrics-port", "9108", "--set", "metrics.host=0.0.0.0"]
    # SIGTERM drains within supervisor.drain_timeout_s; Kubernetes SIGKILLs after the grace period
    drain = cfg.get("supervisor", {}).get("drain_timeout_s", 60.0)
    assert spec["terminationGracePeriodSeconds"] >= drain + 15
    # the run directory on the node, kept across pod restarts
    state = volume(ds, "state")["hostPath"]
    assert state == {"path": "/var/lib/remembrall", "type": "DirectoryOrCreate"}
    assert mount_of(ds, "state")["mountPath"] == "/var/lib/remembrall"
    assert arg_after(c["args"], "--out").startswith("/var/lib/remembrall/")
    # the camera the config reads
    assert cfg["sources"][0]["uri"] == "/dev/video0"
    assert volume(ds, "camera")["hostPath"] == {"path": "/dev/video0", "type": "CharDevice"}
    assert mount_of(ds, "camera")["mountPath"] == "/dev/video0"
    assert c["securityContext"]["privileged"] is True or any(
        k.startswith("squat.ai/") for k in c["resources"].get("limits", {}))
    assert 44 in spec["securityContext"]["supplementalGroups"]  # video
    # $(NODE_NAME) in the args is expanded by Kubernetes only when the env var is declared
    env = {e["name"]: e for e in c["env"]}
    for var in set(re.findall(r"\$\((\w+)\)", " ".join(c["args"]))):
        assert var in env, f"args use $({var}) but env does not define it"
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["REMEMBRALL_RUN_DIR"]["value"] == mount_of(ds, "run")["mountPath"]
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"] == 0  # one process per camera


def test_teacher_deployment_and_service() -> None:
    dep, svc, cfg = teacher(), find("Service", "remembrall-teacher"), embedded_configs()["teacher.yaml"]
    c = container(dep)
    assert c["args"] == ["serve", "/etc/remembrall/teacher.yaml", "--metrics-port", "9109"]
    assert str(c["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert ports["curve"]["port"] == 5557 and ports["curve"]["protocol"] == "TCP"
    assert ports["metrics"]["port"] == 9109
    cports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for name, p in ports.items():
        assert p["targetPort"] in (name, cports[name])
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    bind = urlsplit(cfg["serve"]["bind"])
    assert bind.scheme == "tcp" and bind.hostname == "0.0.0.0" and bind.port == cports["curve"]
    assert cfg["metrics"]["port"] == cports["metrics"] and cfg["metrics"]["host"] == "0.0.0.0"


def test_configs_are_mounted_where_the_args_read_them() -> None:
    for w, key in ((edge(), "edge.yaml"), (teacher(), "teacher.yaml")):
        m = mount_of(w, "config")
        assert m["subPath"] == key and m.get("readOnly") is True
        assert container(w)["args"][1] == m["mountPath"] == f"/etc/remembrall/{key}"
        cm = find("ConfigMap", volume(w, "config")["configMap"]["name"])
        assert key in cm["data"]


def test_the_command_lines_parse() -> None:
    """The pods' args (after the image's entrypoint, ``remembrall``) are what the CLI takes."""
    from remembrall.cli import build_parser

    parser = build_parser()
    run = parser.parse_args(container(edge())["args"])
    assert (run.config, run.out, run.metrics_port) == ("/etc/remembrall/edge.yaml", "/var/lib/remembrall/out", 9108)
    assert "metrics.host=0.0.0.0" in run.set
    commands = next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "serve" not in commands:
        pytest.skip("this checkout has no `remembrall serve`")
    args = parser.parse_args(container(teacher())["args"])
    assert (args.config, args.metrics_port) == ("/etc/remembrall/teacher.yaml", 9109)


# ---------------------------------------------------------------------------- configs and keys
def test_embedded_configs_parse_and_name_the_keys() -> None:
    cfgs = embedded_configs()
    assert set(cfgs) == {"edge.yaml", "teacher.yaml"}
    assert cfgs["edge.yaml"]["label"]["labeler"] == "remote"
    remote = cfgs["edge.yaml"]["remote"]
    assert remote["server_key"] == "/etc/remembrall/keys/teacher.key"
    assert remote["client_key"] == "/etc/remembrall/keys/edge.key_secret"
    serve = cfgs["teacher.yaml"]["serve"]
    assert serve["secret_key"] == "/etc/remembrall/keys/teacher.key_secret"
    assert serve["allowed_keys"] == "/etc/remembrall/keys/allowed"
    assert cfgs["teacher.yaml"]["label"]["labeler"] == "teacher"


def test_secret_items_place_the_keys_the_configs_name() -> None:
    cfgs = embedded_configs()
    remote, serve = cfgs["edge.yaml"]["remote"], cfgs["teacher.yaml"]["serve"]
    edge_files, teacher_files = secret_files(edge()), secret_files(teacher())
    # the edge: the teacher's public certificate and its own secret one, nothing more
    assert edge_files == {remote["server_key"]: "teacher.key", remote["client_key"]: "edge.key_secret"}
    # the teacher: its secret certificate, and the edges' public ones in the allowed folder
    assert teacher_files[serve["secret_key"]] == "teacher.key_secret"
    allowed = {p: k for p, k in teacher_files.items() if PurePosixPath(p).parent == PurePosixPath(serve["allowed_keys"])}
    assert allowed and all(p.endswith(".key") and k.endswith(".key") for p, k in allowed.items())
    assert "edge.key" in allowed.values()
    # a secret certificate never leaves the pod it belongs to
    assert not [k for k in edge_files.values() if k == "teacher.key_secret"]
    assert not [k for k in teacher_files.values() if k == "edge.key_secret"]
    for w in (edge(), teacher()):
        for v in pod_spec(w)["volumes"]:
            if "secret" in v:
                assert mount_of(w, v["name"]).get("readOnly") is True
                assert v["secret"]["defaultMode"] & 0o077 == 0o040  # 0440: owner and fsGroup read


def test_edge_dials_the_services_in_the_manifests() -> None:
    cfg = embedded_configs()["edge.yaml"]

    def service_port(url: str) -> tuple[str, int]:
        parts = urlsplit(url)
        name, ns, *rest = parts.hostname.split(".")
        assert ns == NAMESPACE and rest[:1] == ["svc"], url
        svc = find("Service", name)
        assert parts.port in {p["port"] for p in svc["spec"]["ports"]}, url
        return name, parts.port

    assert service_port(cfg["label"]["remote"]) == ("remembrall-teacher", 5557)
    assert service_port(cfg["retrain"]["remote"]) == ("remembrall-teacher", 5557)
    share = cfg["zoo"]["share"]
    assert urlsplit(share).scheme == "redis" and "stream=" in urlsplit(share).query
    name, _ = service_port(share)
    find("Deployment", name)


# ---------------------------------------------------------------------------- Dockerfiles
def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        buf += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            instr, _, rest = buf.strip().partition(" ")
            out.append((instr.upper(), rest.strip()))
            buf = ""
    assert not buf, f"{path.name}: a continuation runs off the end"
    return out


def _pip_installs(run: str) -> list[str]:
    """The requirements of every ``pip install`` in one RUN."""
    reqs = []
    for cmd in re.split(r"&&|;|\|\|", run):
        words = cmd.split()
        for i in range(len(words) - 1):
            if re.fullmatch(r"(\S*/)?pip[\d.]*", words[i]) and words[i + 1] == "install":
                rest, skip = words[i + 2:], False
                for w in rest:
                    if skip:
                        skip = False
                    elif w in ("-c", "-r", "--index-url", "-i", "--extra-index-url", "--constraint"):
                        skip = True
                    elif not w.startswith("-"):
                        reqs.append(w.strip("\"'"))
                break
    return reqs


def _is_torch(req: str) -> bool:
    return re.match(r"torch(\W|$)", req) is not None


def _is_package(req: str) -> bool:
    return req == "." or req.startswith(".[") or req.startswith("/src")


def test_x86_dockerfile_installs_torch_alone_before_the_package() -> None:
    steps = dockerfile(DOCKER / "Dockerfile")
    assert steps[0] == ("FROM", "python:3.11-slim-bookworm")
    runs = [(i, _pip_installs(args)) for i, (instr, args) in enumerate(steps) if instr == "RUN"]
    torch_runs = [i for i, reqs in runs if any(_is_torch(r) for r in reqs)]
    pkg_runs = [i for i, reqs in runs if any(_is_package(r) for r in reqs)]
    assert len(torch_runs) == 1 and len(pkg_runs) == 1, runs
    (t,), (p,) = torch_runs, pkg_runs
    assert t < p, "torch must be installed before the package"
    assert _pip_installs(steps[t][1]) == ["torch==${TORCH_VERSION}"], "torch's RUN installs torch alone"
    args = dict(a.split("=", 1) for instr, a in steps if instr == "ARG" and "=" in a)
    assert args["TORCH_VERSION"] == "2.13.0"
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu")
    assert "${TORCH_INDEX_URL}" in steps[t][1]
    _check_runtime(steps)


def test_l4t_dockerfile_keeps_jetpacks_torch() -> None:
    steps = dockerfile(DOCKER / "Dockerfile.l4t")
    froms = [a for i, a in steps if i == "FROM"]
    args = dict(a.split("=", 1) for i, a in steps if i == "ARG" and "=" in a)
    assert froms == ["${L4T_BASE}"] and re.search(r"l4t|igpu", args["L4T_BASE"])
    runs = [a for i, a in steps if i == "RUN"]
    assert not [a for a in runs if any(_is_torch(r) for r in _pip_installs(a))], "no pip install of torch"
    (pkg,) = [a for a in runs if any(_is_package(r) for r in _pip_installs(a))]
    assert re.search(r"pip install -c \S*constraints\S*", pkg), "torch pinned to the image's build"
    assert 'test "$before" = "$after"' in pkg
    _check_runtime(steps)


def _check_runtime(steps: list[tuple[str, str]]) -> None:
    users = [a for i, a in steps if i == "USER"]
    assert users and users[-1].split(":")[0] == str(IMAGE_UID)
    (entry,) = [a for i, a in steps if i == "ENTRYPOINT"]
    assert yaml.safe_load(entry)[-1] == "remembrall"
    assert [i for i, _ in steps].index("USER") > max(n for n, (i, _) in enumerate(steps) if i == "RUN")


def test_the_dockerfile_check_catches_torch_with_the_package() -> None:
    assert _pip_installs('pip install --index-url "$X" "torch==2.13.0" .') == ["torch==2.13.0", "."]
    assert _pip_installs("python3 -m pip install -c c.txt '.[brokers]'") == [".[brokers]"]
    assert _pip_installs("a && /usr/bin/pip3 install -U torch && b") == ["torch"]
    assert _is_torch("torch==2.13.0") and not _is_torch("torchvision") and not _is_torch(".[brokers]")


def test_docker_context_keeps_secrets_and_the_venv_out() -> None:
    rules = [r for r in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
             if r.strip() and not r.startswith("#")]
    assert rules[0] == "*", "an allow-list: everything is out unless named"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    copied = set()
    for path in (DOCKER / "Dockerfile", DOCKER / "Dockerfile.l4t"):
        for instr, a in dockerfile(path):
            if instr == "COPY":
                copied.update(a.split()[:-1])
    assert copied == allowed, "the context holds exactly what the Dockerfiles copy"
    assert "deploy" not in allowed and ".venv" not in allowed


@pytest.mark.parametrize("name", ["edge.yaml", "teacher.yaml"])
def test_embedded_configs_load_with_remembralls_own_schema(name: str, tmp_path: Path) -> None:
    """Every key the ConfigMaps set exists, with a valid type and range (else the pod exits 2)."""
    from remembrall.config import load_config

    path = tmp_path / name
    path.write_text(yaml.safe_dump(embedded_configs()[name]))
    cfg = load_config(path)
    if name == "edge.yaml":
        assert cfg.learn and cfg.label.labeler == "remote" and cfg.zoo.share
    else:
        assert cfg.label.labeler == "teacher" and cfg.serve.bind.startswith("tcp://")

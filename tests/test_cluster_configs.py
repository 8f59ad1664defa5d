"""cluster/: every YAML loads with yaml.safe_load and holds what its launcher needs (node
types, GPU resources, install steps, a submit entrypoint naming a studies/ script)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
STUDY_SCRIPT = "studies/scale_pythia.py"
YAMLS = sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))


def load(rel: str):
    docs = [d for d in yaml.safe_load_all((CLUSTER / rel).read_text()) if d is not None]
    assert len(docs) == 1, f"{rel}: expected one document, got {len(docs)}"
    return docs[0]


def check_entrypoint(cmd: str) -> None:
    """`python studies/<script>.py ...`: the script exists once studies/ has it, and is
    always the study script the cluster docs name."""
    argv = shlex.split(cmd)
    assert argv[0] in ("python", "python3"), cmd
    script = argv[1]
    assert script.startswith("studies/") and script.endswith(".py"), cmd
    assert script == STUDY_SCRIPT
    if (ROOT / "studies").is_dir() and any((ROOT / "studies").glob("*.py")):
        assert (ROOT / script).is_file(), f"{script} named by a cluster config does not exist"
        import subprocess
        import sys

        usage = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True,
                               text=True, timeout=120, cwd=ROOT)
        assert usage.returncode == 0, usage.stderr[-2000:]
        for opt in (a.split("=")[0] for a in argv[2:] if a.startswith("--")):
            assert opt in usage.stdout, f"{script} has no option {opt}"


def test_there_are_cluster_yamls():
    names = {p.relative_to(CLUSTER).as_posix() for p in YAMLS}
    assert {"gpu-cluster.yaml", "runtime_env.yaml", "kuberay/raycluster.yaml",
            "kuberay/rayjob.yaml"} <= names


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.relative_to(CLUSTER).as_posix())
def test_every_yaml_loads(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs)


def test_cluster_launcher_config():
    c = load("gpu-cluster.yaml")
    assert c["provider"]["type"] == "aws" and c["provider"]["region"]
    types = c["available_node_types"]
    assert c["head_node_type"] in types
    head = types[c["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = {n: t for n, t in types.items() if n != c["head_node_type"]}
    gpu = {n: t for n, t in workers.items() if t["resources"].get("GPU", 0) > 0}
    assert gpu, "no GPU worker node type"
    for t in gpu.values():
        assert t["max_workers"] >= 1 and re.match(r"^(g5|g6|p4d|p5)\.", t["node_config"]["InstanceType"])
    assert c["max_workers"] >= max(t["max_workers"] for t in gpu.values())
    # the package and Ray get installed on every node, from the repository copied there
    setup = "\n".join(c["setup_commands"])
    assert "pip install" in setup and "mllmcl-ray" in setup and "ray[" in setup
    assert c["file_mounts"]["~/mllmcl-ray"] == "."
    head_cmd = " ".join(c["head_start_ray_commands"])
    assert "ray start --head" in head_cmd and "--dashboard-host=127.0.0.1" in head_cmd
    assert "--port=6379" in head_cmd and "RAY_AUTH_MODE=token" in head_cmd
    worker_cmd = " ".join(c["worker_start_ray_commands"])
    assert "$RAY_HEAD_IP:6379" in worker_cmd and "RAY_AUTH_MODE=token" in worker_cmd
    # no personal defaults: no key pair, subnet, security group or profile filled in
    for t in types.values():
        assert not {"KeyName", "SubnetIds", "SecurityGroupIds", "IamInstanceProfile"} & set(t["node_config"])
    assert "ssh_private_key" not in c["auth"]


def test_runtime_env_is_valid_and_carries_the_dependencies():
    from ray.runtime_env import RuntimeEnv

    env = load("runtime_env.yaml")
    assert env["working_dir"] == "."
    RuntimeEnv(**{**env, "working_dir": str(ROOT)})  # Ray's own validation
    assert env["env_vars"]["HF_HOME"]
    pkgs = env["pip"]["packages"]
    names = {re.split(r"[<>=\[ ;]", p, maxsplit=1)[0].lower() for p in pkgs}
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    needed = {re.split(r"[<>=\[ ;]", d, maxsplit=1)[0].lower() for d in deps} - {"ray"}
    assert needed <= names, f"runtime_env.yaml pip lacks {sorted(needed - names)}"


def _gpu_groups(spec: dict) -> list[dict]:
    out = []
    for g in spec["workerGroupSpecs"]:
        for ctr in g["template"]["spec"]["containers"]:
            limits = ctr.get("resources", {}).get("limits", {})
            if int(limits.get("nvidia.com/gpu", 0)) > 0:
                out.append(g)
    return out


def _check_ray_cluster_spec(spec: dict) -> None:
    import ray

    assert spec["rayVersion"] == ray.__version__
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]
    ports = {p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert {6379, 8265} <= ports
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    groups = _gpu_groups(spec)
    assert groups, "no worker group with nvidia.com/gpu limits"
    for g in groups:
        assert g["maxReplicas"] >= g["minReplicas"] >= 0
        ctr = g["template"]["spec"]["containers"][0]
        assert ctr["resources"]["limits"]["nvidia.com/gpu"] == ctr["resources"]["requests"]["nvidia.com/gpu"]
    images = {c["image"] for grp in [head, *spec["workerGroupSpecs"]] for c in grp["template"]["spec"]["containers"]}
    assert len(images) == 1, f"head and workers should run one image, got {images}"


def test_kuberay_raycluster():
    rc = load("kuberay/raycluster.yaml")
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster"
    _check_ray_cluster_spec(rc["spec"])


def test_kuberay_rayjob():
    from ray.runtime_env import RuntimeEnv

    job = load("kuberay/rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    check_entrypoint(spec["entrypoint"])
    assert "--preset paper" in spec["entrypoint"] and "--data-root" in spec["entrypoint"]
    assert "/mnt/shared" in spec["entrypoint"]  # outputs on the shared volume
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    workdir = env.pop("working_dir")
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert re.search(rf"^WORKDIR {re.escape(workdir)}$", dockerfile, re.M), "working_dir is the image's code dir"
    RuntimeEnv(**env)
    assert spec["shutdownAfterJobFinishes"] is True
    _check_ray_cluster_spec(spec["rayClusterSpec"])


def test_docs_and_configs_name_the_same_study_and_image():
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", dockerfile, re.M).group(1)
    import ray

    assert base.startswith(f"rayproject/ray:{ray.__version__}-") and base.endswith("-gpu")
    for rel in ("gpu-cluster.yaml", "kuberay/raycluster.yaml"):
        assert f"python {STUDY_SCRIPT}" in (CLUSTER / rel).read_text()
    doc = ROOT / "docs" / "cluster.md"
    if doc.exists():
        text = doc.read_text()
        assert f"python {STUDY_SCRIPT}" in text and "ray job submit" in text

"""The cluster configs: the Dockerfile, the Ray cluster launcher YAMLs, the KubeRay manifests.

Nothing here reaches a cloud, a registry or a Kubernetes API. The checks are what breaks
without one noticing: YAML that does not parse, a launcher config Ray would refuse, an image
name, command or config path that drifted between files, a pod without the shared run
directory, a RayJob whose cluster differs from the RayCluster it claims to be.
"""

from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "infra" / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
LAUNCHER = sorted((ROOT / "infra" / "cluster").glob("*.yaml"))
MANIFESTS = sorted((ROOT / "infra" / "k8s").glob("*.yaml"))
DOCS = ROOT / "docs" / "cluster.md"
IMAGE = "ghcr.io/eomae/eomae:cuda"
RUNS = "/runs"  # where every node sees the run directory

# `eomae SUBCOMMAND` where a command starts: a line (YAML list item or comment included),
# after `-- ` (ray job submit) or as a RayJob entrypoint. Prose like "the eomae image" is
# mid-line and not matched; paths and image names have no blank after "eomae".
EOMAE_COMMAND = re.compile(
    r"(?m)(?:^[ \t#>*-]*|--[ \t]+|entrypoint:[ \t]*)eomae[ \t]+([a-z][\w-]*)"
)
CONFIG_PATH = re.compile(r"(?<![\w.-])(?:/app/)?(configs/[\w.-]+\.ya?ml)\b")


# -- helpers -------------------------------------------------------------------------


def load(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of a file (empty ones, e.g. a trailing `---`, dropped)."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifest(kind: str) -> tuple[Path, dict[str, Any]]:
    """The one KubeRay/Kubernetes object of that kind under infra/k8s."""
    found = [(p, d) for p in MANIFESTS for d in load(p) if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} in infra/k8s, found {len(found)}"
    return found[0]


def ray_cluster_specs() -> dict[str, dict[str, Any]]:
    """Every RayCluster spec in the manifests: the RayCluster's and the RayJob's."""
    return {
        "RayCluster": manifest("RayCluster")[1]["spec"],
        "RayJob": manifest("RayJob")[1]["spec"]["rayClusterSpec"],
    }


def pod_templates(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Group name -> pod template of a RayCluster spec, head included."""
    templates = {"head": spec["headGroupSpec"]["template"]}
    for group in spec["workerGroupSpecs"]:
        templates[group["groupName"]] = group["template"]
    return templates


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, args = line.strip().partition(" ")
            out.append((word.upper(), " ".join(args.split())))
    return out


def docs_code() -> str:
    """The fenced code blocks of docs/cluster.md."""
    return "\n".join(re.findall(r"```[a-z]*\n(.*?)```", DOCS.read_text(), flags=re.S))


def command_sources() -> dict[str, str]:
    """Where eomae commands and config paths are written: configs (comments too) and docs."""
    texts = {p.relative_to(ROOT).as_posix(): p.read_text() for p in LAUNCHER + MANIFESTS}
    texts["docs/cluster.md (code)"] = docs_code()
    return texts


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether a .dockerignore excludes a path (a directory excludes what is below it)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        rx = re.escape(pattern.strip("/")).replace(r"\*\*/", "(?:.*/)?")
        rx = rx.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(rx, prefix) for prefix in prefixes):
            return True
    return False


# -- every file ----------------------------------------------------------------------


def test_the_expected_files_are_there() -> None:
    assert DOCKERFILE.is_file() and DOCKERIGNORE.is_file() and DOCS.is_file()
    assert {p.name for p in LAUNCHER} == {"aws.yaml", "gcp.yaml"}
    assert {"raycluster.yaml", "rayjob.yaml"} <= {p.name for p in MANIFESTS}


@pytest.mark.parametrize("path", LAUNCHER + MANIFESTS, ids=lambda p: p.name)
def test_every_yaml_parses(path: Path) -> None:
    docs = load(path)
    assert docs, f"{path.name} holds no document"
    for doc in docs:
        assert isinstance(doc, dict), f"{path.name}: a document is {type(doc).__name__}"
        if path.parent.name == "k8s":
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), path.name


# -- the image -----------------------------------------------------------------------


def test_dockerfile_installs_the_project_with_the_torch_pin() -> None:
    steps = dockerfile_instructions()
    words = [w for w, _ in steps]
    args = dict(reversed(steps))  # first occurrence of each instruction
    assert args["FROM"] == "python:3.11-slim-bookworm"
    assert ("WORKDIR", "/app") in steps
    assert ("COPY", ". .") in steps, "the repository (configs included) must land in /app"

    # constraints.txt is in place and in PIP_CONSTRAINT before the first pip call
    pip_runs = [i for i, (w, a) in enumerate(steps) if w == "RUN" and "pip install" in a]
    assert len(pip_runs) == 2, "torch first, then the project"
    env = " ".join(a for w, a in steps[: pip_runs[0]] if w == "ENV")
    assert "PIP_CONSTRAINT=/app/constraints.txt" in env
    copied = [a for w, a in steps[: pip_runs[0]] if w == "COPY"]
    assert any(a.split()[0] == "constraints.txt" for a in copied)
    assert "torch==" in (ROOT / "constraints.txt").read_text()

    torch_step, project_step = (steps[i][1] for i in pip_runs)
    assert any(w == "ARG" and a.startswith("VARIANT") for w, a in steps[: pip_runs[0]])
    assert "https://download.pytorch.org/whl/cpu" in torch_step and "cpu)" in torch_step
    assert "cuda)" in torch_step
    install = project_step.split("pip install", 1)[1].split("&&")[0].split()
    assert "." in install, "the project itself is installed"
    assert "-e" not in install and "--editable" not in install
    assert '"ray[default]"' in install, "the dashboard and job API that KubeRay relies on"

    # Debian run-time packages, and no ENTRYPOINT (the cluster tools set the command)
    apt = " ".join(a for w, a in steps if w == "RUN" and "apt-get install" in a).split()
    for pkg in ("postgresql-15", "postgresql-15-postgis-3", "rsync", "openssh-client", "wget"):
        assert pkg in apt, pkg
    assert "ENTRYPOINT" not in words
    assert args["CMD"].startswith('["eomae"')


def test_dockerignore_keeps_only_what_the_build_needs() -> None:
    patterns = [
        ln.strip()
        for ln in DOCKERIGNORE.read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    for junk in (".venv/bin/python", "runs/demo/cube.zarr", ".git/HEAD",
                 "eomae/__pycache__/cli.cpython-311.pyc", "eomae.egg-info/PKG-INFO"):  # fmt: skip
        assert dockerignored(junk, patterns), f"{junk} would be sent to the build"
    for needed in ("pyproject.toml", "constraints.txt", "README.md", "configs/demo.yaml",
                   "eomae/cli.py", "infra/queryables.json", "infra/docker/Dockerfile"):  # fmt: skip
        assert (ROOT / needed).exists(), needed
        assert not dockerignored(needed, patterns), f"{needed} is excluded from the build"


# -- what the configs run ------------------------------------------------------------


def test_eomae_commands_name_real_subcommands() -> None:
    from eomae.cli import Eomae

    subcommands = {name.replace("_", "-") for name in Eomae.model_fields}
    assert "run" in subcommands, "`eomae run` is what the clusters execute"
    found = {
        (where, sub) for where, text in command_sources().items()
        for sub in EOMAE_COMMAND.findall(text)
    }  # fmt: skip
    assert {sub for _, sub in found} >= {"run"}, found
    unknown = sorted((where, sub) for where, sub in found if sub not in subcommands)
    assert not unknown, f"not eomae subcommands: {unknown}"


def test_referenced_configs_exist() -> None:
    found = {
        (where, path) for where, text in command_sources().items()
        for path in CONFIG_PATH.findall(text)
    }  # fmt: skip
    assert any(where.endswith("rayjob.yaml") for where, _ in found), found
    missing = sorted((where, path) for where, path in found if not (ROOT / path).is_file())
    assert not missing, f"configs referenced but not in the repository: {missing}"


def test_one_image_name_everywhere() -> None:
    images: dict[str, set[str]] = {}
    for path in LAUNCHER:
        cfg = load(path)[0]
        docker = [cfg["docker"]] + [t["docker"] for t in cfg["available_node_types"].values()
                                    if "docker" in t]  # fmt: skip
        images[path.name] = {
            d[key] for d in docker for key in ("image", "head_image", "worker_image") if key in d
        }
    for kind, spec in ray_cluster_specs().items():
        images[kind] = {
            c["image"] for t in pod_templates(spec).values() for c in t["spec"]["containers"]
        }
    assert all(names == {IMAGE} for names in images.values()), images
    # ... and the build commands given in the docs and the Dockerfile tag that name
    assert f"-t {IMAGE} ." in DOCS.read_text()
    assert f"-t {IMAGE} ." in DOCKERFILE.read_text()


# -- the Ray cluster launcher --------------------------------------------------------


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_config_passes_rays_own_checks(path: Path) -> None:
    """What `ray up` does first: fill in the provider's defaults, validate the schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = load(path)[0]
    full = prepare_config(copy.deepcopy(cfg))
    validate_config(full)
    assert full["provider"]["type"] == path.stem
    assert full["head_node_type"] in full["available_node_types"]
    # The image holds everything: Ray's default setup commands (pip installs) are off.
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert full[key] == [], key


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_has_autoscaling_gpu_workers_and_the_shared_mount(path: Path) -> None:
    cfg = load(path)[0]
    types = cfg["available_node_types"]
    workers = {n: t for n, t in types.items() if n != cfg["head_node_type"]}
    for name, t in workers.items():
        assert t.get("min_workers", 0) == 0 < t["max_workers"], f"{name} does not autoscale"

    def has_gpu(t: dict[str, Any]) -> bool:
        instance = t["node_config"].get("InstanceType", "")  # AWS: g*/p* families have GPUs
        return t["resources"].get("GPU", 0) >= 1 or instance.startswith(("g", "p"))

    gpu = {n: t for n, t in workers.items() if has_gpu(t)}
    assert gpu, f"{path.name} has no GPU worker type"
    for name, t in gpu.items():
        assert "--gpus all" in t["docker"]["worker_run_options"], name
        if cfg["provider"]["type"] == "gcp":  # GPU VMs must not live-migrate
            assert t["node_config"]["scheduling"]["onHostMaintenance"] == "TERMINATE", name
    head = types[cfg["head_node_type"]]
    assert not has_gpu(head), "the head is a CPU node"

    # /runs: mounted on every host before its container starts, then into the container
    assert f"--volume {RUNS}:{RUNS}" in cfg["docker"]["run_options"]
    mounts = [c for c in cfg["initialization_commands"] if f" {RUNS}" in c and "mount" in c]
    assert mounts, f"{path.name} does not mount the run directory"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_shell_commands_are_valid_bash(path: Path) -> None:
    cfg = load(path)[0]
    commands = cfg["initialization_commands"]
    assert commands
    for command in commands:
        check = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
        assert check.returncode == 0, f"{command}\n{check.stderr}"


# -- KubeRay -------------------------------------------------------------------------


def test_kuberay_kinds_and_api_versions() -> None:
    kinds = {(d["kind"], d["apiVersion"]) for p in MANIFESTS for d in load(p)}
    assert kinds == {
        ("RayCluster", "ray.io/v1"),
        ("RayJob", "ray.io/v1"),
        ("PersistentVolume", "v1"),
        ("PersistentVolumeClaim", "v1"),
    }
    assert manifest("RayCluster")[0].name == "raycluster.yaml"
    assert manifest("RayJob")[0].name == "rayjob.yaml"


def test_run_directory_volume_is_an_s3_bucket_with_gcs_as_alternative() -> None:
    path, pv = manifest("PersistentVolume")
    _, pvc = manifest("PersistentVolumeClaim")
    assert pv["spec"]["csi"]["driver"] == "s3.csi.aws.com"
    assert pv["spec"]["accessModes"] == pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"]["volumeName"] == pv["metadata"]["name"]
    assert pv["spec"]["claimRef"]["name"] == pvc["metadata"]["name"]
    # rename (atomic writes) and append (metrics log) on a directory bucket
    assert {"allow-delete", "allow-overwrite", "incremental-upload"} <= set(
        pv["spec"]["mountOptions"]
    )
    assert pv["spec"]["csi"]["volumeAttributes"]["bucketName"].endswith("--x-s3")
    text = path.read_text()
    assert "gcsfuse.csi.storage.gke.io" in text and 'gke-gcsfuse/volumes: "true"' in text


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_ray_cluster_autoscales_gpu_workers(kind: str) -> None:
    spec = ray_cluster_specs()[kind]
    assert spec["enableInTreeAutoscaling"] is True
    ray = next(
        Requirement(r)
        for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        if Requirement(r).name == "ray"
    )
    assert Version(spec["rayVersion"]) in ray.specifier, "rayVersion outside pyproject's range"
    # KubeRay passes rayStartParams to `ray start` as strings and rejects other types
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
    gpus = []
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["maxReplicas"] > group["minReplicas"], group["groupName"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        gpus.append(int(limits.get("nvidia.com/gpu", 0)))
    assert max(gpus) >= 1, "no GPU worker group"


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_every_ray_pod_mounts_the_run_directory(kind: str) -> None:
    claim = manifest("PersistentVolumeClaim")[1]["metadata"]["name"]
    for group, template in pod_templates(ray_cluster_specs()[kind]).items():
        spec = template["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
        assert RUNS in mounts, f"{group} pods lack {RUNS}"
        assert volumes[mounts[RUNS]]["persistentVolumeClaim"]["claimName"] == claim, group


def test_rayjob_runs_the_pipeline_on_the_shared_run_directory() -> None:
    spec = manifest("RayJob")[1]["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["eomae", "run"]
    assert argv[2].startswith("/app/configs/"), "the config comes from the image"
    run_dir = argv[argv.index("--run-dir") + 1]
    assert Path(run_dir).parent == Path(RUNS)
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True


def test_rayjob_cluster_is_the_raycluster() -> None:
    """Two copies of one cluster (a RayJob cannot refer to a spec in another file)."""
    assert ray_cluster_specs()["RayJob"] == ray_cluster_specs()["RayCluster"]

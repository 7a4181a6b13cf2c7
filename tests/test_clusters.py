"""Offline checks of the cluster definitions in clusters/.

Launcher YAMLs (everything in clusters/ except kuberay*.yaml) go through the same first step
as `ray up`: `prepare_config` (fills defaults from the provider's defaults.yaml packaged in the
ray wheel, merges setup commands, checks the docker section, fills per-node-type min/max
workers) and then `validate_config` (jsonschema against ray/autoscaler/ray-schema.json plus
cross-field checks). `ray up` additionally asks the cloud API to fill in missing node
resources; that step needs credentials and network, so it is left out and every node type
declares its resources itself (which the checks below require).

No test opens a network connection: an autouse fixture makes any attempt fail.
"""

from __future__ import annotations

import copy
import json
import re
import socket
import subprocess
from importlib.metadata import version
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from click import ClickException
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTERS = Path(__file__).resolve().parent.parent / "clusters"
LAUNCHER_FILES = sorted(p for p in CLUSTERS.glob("*.yaml") if not p.name.startswith("kuberay"))
KUBERAY_FILES = sorted(CLUSTERS.glob("kuberay*.yaml"))
CLOUD_FILES = [p for p in LAUNCHER_FILES if p.name != "local.yaml"]
DOCKERFILE = CLUSTERS / "docker" / "Dockerfile"

RAY_VERSION = ray.__version__
MLFLOW_VERSION = version("mlflow")
POOL_MARKERS = {"aar_train_gpu", "aar_engine_gpu"}


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def load(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def ray_up_validate(config: dict) -> dict:
    """What `ray up` does to a config before it talks to a provider."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def all_commands(config: dict) -> list[str]:
    keys = [k for k in config if k.endswith("_commands")]
    return [cmd for k in keys for cmd in (config[k] or [])]


def ids(paths):
    return [p.name for p in paths]


# --------------------------------------------------------------------------- launcher YAMLs


def test_cluster_files_present():
    assert {p.name for p in LAUNCHER_FILES} >= {"aws.yaml", "gcp.yaml", "local.yaml"}
    assert {p.name for p in KUBERAY_FILES} >= {"kuberay.yaml", "kuberay-mlflow.yaml", "kuberay-storage.yaml"}


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=ids(LAUNCHER_FILES))
def test_launcher_config_passes_ray_up_validation(path):
    prepared = ray_up_validate(load(path))
    types = prepared["available_node_types"]
    assert prepared["head_node_type"] in types
    for name, node_type in types.items():
        assert node_type["min_workers"] <= node_type["max_workers"], name


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=ids(LAUNCHER_FILES))
def test_no_top_level_min_workers(path):
    # `ray up` silently drops a top-level min_workers on cloud providers (see the test below);
    # set min_workers per node type instead.
    assert "min_workers" not in load(path)


def test_top_level_min_workers_is_not_in_the_schema():
    config = load(CLUSTERS / "aws.yaml")
    config["min_workers"] = 2
    with pytest.raises(jsonschema.ValidationError, match="min_workers"):
        validate_config(config)
    # ...but prepare_config removes it before validation, so `ray up` would not complain.
    assert "min_workers" not in prepare_config(copy.deepcopy(config))


@pytest.mark.parametrize("path", CLOUD_FILES, ids=ids(CLOUD_FILES))
def test_cloud_node_types(path):
    config = load(path)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    markers_seen = set()
    for name, node_type in types.items():
        if name == config["head_node_type"]:
            continue
        resources = node_type["resources"]
        assert resources.get("GPU", 0) > 0, f"{name}: worker groups are GPU groups"
        markers = POOL_MARKERS & resources.keys()
        assert len(markers) == 1, f"{name}: exactly one pool marker"
        (marker,) = markers
        assert resources[marker] == resources["GPU"], f"{name}: one marker unit per GPU"
        assert node_type["max_workers"] <= config["max_workers"]
        markers_seen.add(marker)
    assert markers_seen == POOL_MARKERS, "a training group and an engine group"


def test_local_workers_advertise_both_pool_markers():
    start = " ".join(load(CLUSTERS / "local.yaml")["worker_start_ray_commands"])
    for marker in POOL_MARKERS:
        assert marker in start


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=ids(LAUNCHER_FILES))
def test_ray_version_matches_installed(path):
    config = load(path)
    text = "\n".join(all_commands(config))
    pins = re.findall(r"\bray(?:\[[\w,-]+\])?==([\w.]+)", text)
    images = [v for k, v in (config.get("docker") or {}).items() if k.endswith("image")]
    image_versions = [m.group(1) for i in images if (m := re.match(r"rayproject/ray:([\d.]+)", i))]
    assert pins, "setup must pin the ray version it installs"
    assert len(image_versions) == len(images), f"unrecognised image in {images}"
    assert set(pins) | set(image_versions) == {RAY_VERSION}


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=ids(LAUNCHER_FILES))
def test_project_install_and_mlflow_start(path):
    config = load(path)
    assert config["file_mounts"]["~/aar_ray"] == "."
    head_setup = " ".join(config["head_setup_commands"])
    worker_setup = " ".join(config["worker_setup_commands"])
    assert "cd ~/aar_ray" in head_setup and "pip install -q -e ." in head_setup
    assert "-e '.[gpu]'" in worker_setup
    head_start = " ".join(config["head_start_ray_commands"])
    assert "clusters/start_mlflow.sh" in head_start
    if path in CLOUD_FILES:
        assert "--require-server-db" in head_start
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(config[key])
        assert "RAY_AUTH_MODE=token" in start and "MLFLOW_TRACKING_URI=" in start, key


SHARED_HOME = "/mnt/aar"
CLUSTER_README = CLUSTERS / "README.md"


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=ids(LAUNCHER_FILES))
def test_every_node_keeps_state_on_the_shared_home(path):
    """Ray (and so every job and task) starts with AAR_HOME on a mount every node has."""
    config = load(path)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(config[key])
        assert f"AAR_HOME={SHARED_HOME}" in start, key
        assert start.index("AAR_HOME=") < start.index("ray start"), f"{key}: export it before `ray start`"
    mounts = " ".join(config.get("initialization_commands", []) + config.get("setup_commands", []))
    assert re.search(rf"mount -t nfs4? .* {SHARED_HOME}", mounts), "the home must be mounted"
    assert f"mountpoint -q {SHARED_HOME}" in mounts  # running `ray up` again does not mount twice
    if "docker" in config:
        assert f"-v {SHARED_HOME}:{SHARED_HOME}" in config["docker"]["run_options"]


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=ids(LAUNCHER_FILES))
def test_the_api_key_comes_from_outside_the_repository(path):
    config = load(path)
    assert config["file_mounts"]["~/aar_secrets"].startswith("~/.config/"), "secrets live outside the repo"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(config[key])
        assert 'ANTHROPIC_API_KEY="$(cat ~/aar_secrets/anthropic_api_key)"' in start, key


def test_no_secret_values_in_the_cluster_files():
    for path in CLUSTERS.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="ignore")
            assert not re.search(r"sk-ant-[\w-]{8,}|ANTHROPIC_API_KEY\s*[:=]\s*['\"]?sk-", text), path


@pytest.mark.parametrize("path", CLOUD_FILES, ids=ids(CLOUD_FILES))
def test_cloud_heads_run_a_cpu_image_with_cpu_torch(path):
    config = load(path)
    assert config["docker"]["head_image"].endswith("-cpu")
    assert config["docker"]["worker_image"].endswith("-gpu")
    head_setup = config["head_setup_commands"]
    cpu_torch = [i for i, c in enumerate(head_setup) if "download.pytorch.org/whl/cpu" in c]
    project = [i for i, c in enumerate(head_setup) if "pip install -q -e ." in c]
    assert cpu_torch and project and cpu_torch[0] < project[0], "CPU torch before the project"


def test_the_gpu_driver_that_vllm_needs_is_stated():
    text = " ".join(CLUSTER_README.read_text().split())
    assert "CUDA 13.0" in text and "R580" in text
    for path in [*CLOUD_FILES, CLUSTERS / "local.yaml", CLUSTERS / "kuberay.yaml", DOCKERFILE]:
        assert "R580" in path.read_text(), path


# Each mutation breaks a real config in a way `ray up` must reject before launching anything.
def _drop_worker_resources(c):
    del c["available_node_types"]["engine"]["resources"]


def _gpu_count_as_string(c):
    c["available_node_types"]["train"]["resources"]["GPU"] = "4"


def _typo_in_node_type(c):
    c["available_node_types"]["train"]["max_worker"] = c["available_node_types"]["train"].pop(
        "max_workers"
    )


def _unknown_head_type(c):
    c["head_node_type"] = "no-such-type"


def _min_workers_exceed_total(c):
    c["available_node_types"]["engine"]["min_workers"] = c["max_workers"] + 1


def _unknown_top_level_key(c):
    c["setup_command"] = c.pop("setup_commands")


SCHEMA, CROSS_FIELD = jsonschema.ValidationError, ValueError
BROKEN = [
    ("gcp.yaml", _drop_worker_resources, SCHEMA, "'resources' is a required property"),
    ("gcp.yaml", _gpu_count_as_string, SCHEMA, "is not of type 'integer'"),
    ("gcp.yaml", _typo_in_node_type, SCHEMA, "'max_worker' was unexpected"),
    ("gcp.yaml", _unknown_head_type, CROSS_FIELD, "must be one of `available_node_types`"),
    ("gcp.yaml", _min_workers_exceed_total, CROSS_FIELD, "smaller than the sum of `min_workers`"),
    ("gcp.yaml", _unknown_top_level_key, SCHEMA, "'setup_command' was unexpected"),
    ("aws.yaml", _gpu_count_as_string, SCHEMA, "is not of type 'integer'"),
    ("aws.yaml", _typo_in_node_type, SCHEMA, "'max_worker' was unexpected"),
    ("aws.yaml", _min_workers_exceed_total, CROSS_FIELD, "smaller than the sum of `min_workers`"),
]


@pytest.mark.parametrize(
    "name,mutate,error,message",
    BROKEN,
    ids=[f"{name}-{mutate.__name__.strip('_')}" for name, mutate, _, _ in BROKEN],
)
def test_validation_rejects_broken_config(name, mutate, error, message):
    config = load(CLUSTERS / name)
    ray_up_validate(config)  # the unmodified file passes
    mutate(config)
    with pytest.raises(error, match=re.escape(message)):
        ray_up_validate(config)


def test_local_config_rejects_node_types():
    # On-prem clusters get a single node type from Ray; declaring types is an error.
    config = load(CLUSTERS / "local.yaml")
    config["available_node_types"] = {"gpu": {"resources": {"GPU": 1}, "node_config": {}}}
    with pytest.raises(ClickException):
        ray_up_validate(config)


def test_start_mlflow_script_parses():
    subprocess.run(["bash", "-n", str(CLUSTERS / "start_mlflow.sh")], check=True)


# --------------------------------------------------------------------------- KubeRay


def kuberay_documents() -> list[dict]:
    docs = []
    for path in KUBERAY_FILES:
        with open(path) as f:
            docs += [d for d in yaml.safe_load_all(f) if d]
    return docs


def pod_specs(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    if doc["kind"] == "RayCluster":
        groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
        return [g["template"]["spec"] for g in groups]
    if "template" in spec:
        return [spec["template"]["spec"]]
    return []


def kuberay_resources(param: str) -> dict:
    # KubeRay's --resources format: '"{\"name\": 1}"' (shell-quoted JSON)
    assert param.startswith('"') and param.endswith('"'), param
    return json.loads(param[1:-1].replace('\\"', '"'))


def test_raycluster_shape():
    docs = kuberay_documents()
    clusters = [d for d in docs if d["kind"] == "RayCluster"]
    assert len(clusters) == 1
    rc = clusters[0]
    assert rc["apiVersion"] == "ray.io/v1"
    spec = rc["spec"]
    assert spec["rayVersion"] == RAY_VERSION
    assert spec["authOptions"]["mode"] == "token"
    assert spec["headGroupSpec"]["template"]["spec"]["containers"]

    head_limits = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in head_limits

    markers_seen = set()
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["maxReplicas"], group["groupName"]
        (container,) = group["template"]["spec"]["containers"]
        res = container["resources"]
        gpus = int(res["limits"]["nvidia.com/gpu"])
        assert gpus > 0, group["groupName"]
        assert int(res["requests"]["nvidia.com/gpu"]) == gpus
        custom = kuberay_resources(group["rayStartParams"]["resources"])
        (marker,) = POOL_MARKERS & custom.keys()
        assert custom[marker] == gpus
        markers_seen.add(marker)
    assert markers_seen == POOL_MARKERS


def test_raycluster_pods_share_the_home_and_take_the_key_from_a_secret():
    docs = kuberay_documents()
    (claim,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == "aar-home"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    (rc,) = [d for d in docs if d["kind"] == "RayCluster"]
    for pod in pod_specs(rc):
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["aar-home"]["persistentVolumeClaim"]["claimName"] == "aar-home"
        for c in pod["containers"]:
            env = {e["name"]: e for e in c["env"]}
            assert env["AAR_HOME"]["value"] == SHARED_HOME, c["name"]
            assert {"name": "aar-home", "mountPath": SHARED_HOME} in c["volumeMounts"], c["name"]
            key = env["ANTHROPIC_API_KEY"]
            assert "value" not in key and key["valueFrom"]["secretKeyRef"]["name"] == "aar-anthropic"


def test_the_kuberay_head_is_a_cpu_image_built_from_a_cpu_base():
    (rc,) = [d for d in kuberay_documents() if d["kind"] == "RayCluster"]
    head_image = rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    name = head_image.rpartition(":")[0].rpartition("/")[2]
    assert name == "aar-ray-cpu"
    text = DOCKERFILE.read_text()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(RAY_VERSION)}-py311-cpu AS ray-cpu$", text, re.M)
    assert f"--target ray-cpu -t REGISTRY/aar/{name}:" in text
    stage = text.split("AS ray-cpu", 1)[1].split("FROM ", 1)[0]
    assert "download.pytorch.org/whl/cpu" in stage and "[gpu]" not in stage


def test_kuberay_images_are_pinned():
    images = []
    for doc in kuberay_documents():
        for pod in pod_specs(doc):
            for c in pod.get("initContainers", []) + pod["containers"]:
                images.append(c["image"])
    assert len(images) >= 5
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag, f"{image}: no tag"
        assert tag != "latest", f"{image}: tag must be pinned"
        assert "@" not in image or re.search(r"@sha256:[0-9a-f]{64}$", image)


def test_mlflow_service_and_tracking_uri():
    docs = kuberay_documents()
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    deployment = by_kind["Deployment"]["aar-mlflow"]
    service = by_kind["Service"]["aar-mlflow"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    port = service["spec"]["ports"][0]["port"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--backend-store-uri") + 1].startswith("postgresql://")
    assert args[args.index("--port") + 1] == str(port)
    assert by_kind["Deployment"]["aar-mlflow"]["spec"]["template"]["spec"]["containers"][0][
        "image"
    ].endswith(f":{MLFLOW_VERSION}")

    expected = f"http://aar-mlflow:{port}"
    (rc,) = by_kind["RayCluster"].values()
    for pod in pod_specs(rc):
        for c in pod["containers"]:
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            assert env.get("MLFLOW_TRACKING_URI") == expected, c["name"]


def test_dockerfile_versions_match_installed():
    text = DOCKERFILE.read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    ray_bases = [b for b in bases if b.startswith("rayproject/ray:")]
    assert ray_bases and all(b.startswith(f"rayproject/ray:{RAY_VERSION}-") for b in ray_bases)
    assert all(not b.endswith(":latest") and ":" in b for b in bases)
    assert set(re.findall(r"\bray\[[\w,-]+\]==([\w.]+)", text)) == {RAY_VERSION}
    assert set(re.findall(r"\bmlflow==([\w.]+)", text)) == {MLFLOW_VERSION}

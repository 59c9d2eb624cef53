"""The cluster files: the GPU profile validates and fits its GPUs, the manifests carry it and are
current, and the demo config builds."""

import json
import re
from pathlib import Path

import pytest
import yaml

from deployments.config import GraphConfig
from deployments import memory
from deployments.memory import GIB, MemoryBudgetError
from tests.helpers import generator

GPU_PROFILE = Path("cluster/serve_config.gpu.yaml")
CONFIGS = Path("tests/data/configs")
# The profile's GPU, an NVIDIA L40S (48 GB; nvidia-smi shows 46068 MiB), less what the driver keeps.
GPU_GIB = 44.5


def profile_args() -> dict:
    return yaml.safe_load(GPU_PROFILE.read_text())["applications"][0]["args"]


def preflight(tier) -> float:
    """The tier's memory preflight on its share of the profile's GPU, as its replica runs it."""
    cfg = json.loads((CONFIGS / f"{tier.model_id}.json").read_text())
    return memory.preflight(cfg, tier.dtype, tier.max_model_len, tier.kv_cache_gib,
                            (int(GPU_GIB * GIB), tier.deployment.num_gpus,
                             tier.gpu_memory_utilization), 0, 0)["estimate_gib"]


def test_rayservice_embeds_the_gpu_profile_and_is_current():
    with open("cluster/rayservice.yaml") as f:
        manifest = yaml.safe_load(f)
    embedded = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert manifest["kind"] == "RayService" and manifest["apiVersion"] == "ray.io/v1"
    assert embedded == yaml.safe_load(GPU_PROFILE.read_text())  # the profile, unchanged
    assert embedded["http_options"]["host"] == "0.0.0.0"  # reachable through the pod IP
    assert manifest == generator().rayservice()  # else run `python cluster/generate.py`
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == "2.60.0" and cluster["enableInTreeAutoscaling"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    group = cluster["workerGroupSpecs"][0]
    assert group["minReplicas"] < group["maxReplicas"]
    worker = group["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_gpu_profile_validates_builds_and_autoscales_every_model():
    import graph

    config = GraphConfig.model_validate(profile_args())
    assert graph.app_builder(profile_args()) is not None
    for deployment in [t.deployment for t in config.tiers] + [config.embedder.deployment]:
        assert deployment.autoscaling is not None
        assert deployment.serve_options("x")["num_replicas"] == "auto"
    assert [t.deployment.num_gpus for t in config.tiers] == [0.45, 1]
    assert 0 < config.embedder.deployment.num_gpus < 1 and config.embedder.dtype == "float16"
    assert all(t.model_source.startswith("/models/") for t in config.tiers)


def test_every_gpu_profile_tier_fits_its_gpu_share():
    config = GraphConfig.model_validate(profile_args())
    fits = {t.name: preflight(t) for t in config.tiers}
    assert fits == {"fast": pytest.approx(8.2, abs=0.05), "careful": pytest.approx(17.6, abs=0.05)}
    # Two `fast` replicas and an embedder replica share one GPU, by Ray's accounting.
    fast = config.tiers[0].deployment.num_gpus
    assert 2 * fast + config.embedder.deployment.num_gpus <= 1


def test_the_fit_check_refuses_a_share_too_small():
    """The check above can fail: the 8B tier on a fifth of the GPU does not fit (estimate 17.6 GiB,
    share 0.18 x 44.5 = 8.0 GiB)."""
    careful = GraphConfig.model_validate(profile_args()).tiers[1]
    careful.deployment.num_gpus = 0.2
    with pytest.raises(MemoryBudgetError, match="needs 17.6 GiB"):
        preflight(careful)


def test_serve_config_validates_and_builds_the_graph():
    import graph

    with open("serve_config.yaml") as f:
        args = yaml.safe_load(f)["applications"][0]["args"]
    app = graph.app_builder(args)
    assert app is not None


def test_ray_up_config_mounts_the_gpu_profile():
    with open("cluster/ray-cluster.yaml") as f:
        launcher = yaml.safe_load(f)
    mounted = launcher["file_mounts"]["/home/ray/graphserve/cluster/serve_config.gpu.yaml"]
    assert mounted == "./cluster/serve_config.gpu.yaml"  # the GPU profile itself: never stale
    head = " ".join(launcher["head_start_ray_commands"])
    assert "--num-cpus=0" in head and "--dashboard-host=127.0.0.1" in head and "--metrics-export-port=8080" in head
    assert launcher["available_node_types"]["gpu-worker"]["resources"] == {"llm": 1}


def test_ray_up_config_starts_with_one_path_scheme_token_auth_an_image_and_filled_models():
    """Issue 28 item 4: the commands run in the container (home /home/ray) and read files where
    file_mounts put them; token auth; a pinned image in a named registry; /models filled."""
    with open("cluster/ray-cluster.yaml") as f:
        launcher = yaml.safe_load(f)
    targets = set(launcher["file_mounts"])
    assert all(t.startswith("/home/ray/") for t in targets)
    commands = " ".join(launcher["head_start_ray_commands"] + launcher["worker_start_ray_commands"]
                        + launcher["worker_setup_commands"])
    sourced = set(re.findall(r"\. (\S+)", commands))
    assert sourced == {"/home/ray/graphserve/cluster/serve.env"} and sourced <= targets
    assert "~" not in " ".join(launcher["head_start_ray_commands"]).replace("~/ray_bootstrap_config.yaml", "")
    docker = launcher["docker"]
    assert "-e RAY_AUTH_MODE=token" in docker["run_options"]
    assert "/home/ray/.ray/auth_token" in targets  # the same token on every node
    assert generator().check_image(docker["image"])
    # /models: mounted, and filled on the GPU workers from the same sources as the KubeRay Job.
    assert "-v /models:/models" in docker["run_options"]
    fill = " ".join(launcher["worker_setup_commands"])
    assert all(f"'{repo}'" in fill for repo in generator().MODELS.values())
    assert "/home/ray/.cache/huggingface/token" in targets

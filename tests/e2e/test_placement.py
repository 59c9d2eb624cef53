"""GPU fractions and Ray's own config layer, on 2 fake GPUs (conftest: Ray schedules by count only,
so placement and the settings a replica derives from it are testable without CUDA).

- From our args: two replicas with num_gpus 0.5 share one GPU, each engine would get 0.45 of its
  memory.
- From a `deployments:` entry in a serve config (what `serve build` writes and Ray users add):
  it overrides the args' replicas, autoscaling and actor options, and the replica derives its
  memory share from what Ray gave it, not from the args.
"""

import time

import httpx
import ray
from ray import serve

from deployments.config import DeploymentOptions, LLMConfig, assigned
from deployments.memory import gpu_memory_utilization


@serve.deployment
class Where:
    """Reports where Serve put this replica and what the LLM deployment would derive there."""

    def __init__(self, tier: LLMConfig):
        self.tier = tier

    def __call__(self, request) -> dict:
        context = ray.get_runtime_context()
        gpus = assigned(self.tier.deployment)["GPU"]  # as LLMDeployment reads it
        return {"replica": serve.get_replica_context().replica_id.unique_id,
                "gpu_ids": context.get_accelerator_ids().get("GPU", []),
                "gpus": gpus,
                "gpu_memory_utilization": gpu_memory_utilization(self.tier.gpu_memory_utilization,
                                                                 gpus)}


def probe_app(args: dict):
    """An app builder, as graph:app_builder is one: args -> config -> deployment options."""
    tier = LLMConfig.model_validate(args)
    return Where.options(**tier.deployment.serve_options("probe")).bind(tier)


def replicas_seen(url: str, count: int) -> dict:
    # Asked over HTTP, not through a handle: on the throughput-optimized data path a handle
    # routes on its caller's event loop, which a synchronous test does not have.
    seen = {}
    for _ in range(150):  # the HTTP route of a new app appears within a few seconds
        r = httpx.get(url, timeout=30)
        if r.status_code == 200:
            seen[r.json()["replica"]] = r.json()
        if len(seen) == count:
            break
        time.sleep(0.2)
    return seen


def test_half_gpu_replicas_share_one_gpu_and_split_its_memory(base_url):
    tier = LLMConfig(name="probe", deployment=DeploymentOptions(
        num_replicas=2, num_gpus=0.5, num_cpus=0.01))
    serve.run(probe_app(tier.model_dump()), name="placement", route_prefix="/placement")
    try:
        seen = replicas_seen(f"{base_url}/placement", 2)
        assert len(seen) == 2
        assert all(len(r["gpu_ids"]) == 1 for r in seen.values())  # each sees one GPU...
        assert len({r["gpu_ids"][0] for r in seen.values()}) == 1  # ...the same one
        assert {r["gpu_memory_utilization"] for r in seen.values()} == {0.45}
        assert ray.available_resources().get("GPU", 0) == 1.0  # 2 x 0.5 = one GPU in use
    finally:
        serve.delete("placement")


def test_a_deployments_entry_in_the_serve_config_overrides_the_args(base_url):
    from ray.serve._private import api
    from ray.serve.schema import ServeDeploySchema

    # The args say: one replica, no GPU. The config's `deployments:` entry says: autoscaling with
    # 2 replicas at least, half a GPU each. Ray's layer wins (docs/config.md, "Config layers").
    args = LLMConfig(name="probe", deployment=DeploymentOptions(
        num_replicas=1, num_gpus=0, num_cpus=0.01)).model_dump()
    config = ServeDeploySchema.model_validate({"applications": [{
        "name": "override", "route_prefix": "/override",
        "import_path": "tests.e2e.test_placement:probe_app", "args": args,
        "deployments": [{"name": "probe", "num_replicas": "auto",
                         "autoscaling_config": {"min_replicas": 2, "max_replicas": 2},
                         "ray_actor_options": {"num_cpus": 0.01, "num_gpus": 0.5}}]}]})
    api.serve_start().deploy_apps(config)  # what `serve deploy` / `serve run config.yaml` do
    try:
        seen = replicas_seen(f"{base_url}/override", 2)
        assert len(seen) == 2, seen  # autoscaling's min_replicas, not the args' num_replicas
        assert {r["gpus"] for r in seen.values()} == {0.5}  # the override's actor options...
        assert {r["gpu_memory_utilization"] for r in seen.values()} == {0.45}  # ...drive vLLM's share
        assert len({r["gpu_ids"][0] for r in seen.values()}) == 1
    finally:
        serve.delete("override")

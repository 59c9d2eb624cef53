"""GPU fractions from the config: two replicas with num_gpus 0.5 share one GPU, and each vLLM
engine would get 0.45 of its memory. Ray is given 2 fake GPUs (conftest): it schedules by count
only, so this checks placement and the derived settings without CUDA."""

import time

import httpx
import ray
from ray import serve

from deployments.config import DeploymentOptions, LLMConfig
from deployments.llm import gpu_memory_utilization


@serve.deployment
class Where:
    """Reports where Serve put this replica and what the LLM deployment would derive there."""

    def __init__(self, tier: LLMConfig):
        self.tier = tier

    def __call__(self, request) -> dict:
        context = ray.get_runtime_context()
        return {"replica": serve.get_replica_context().replica_id.unique_id,
                "gpu_ids": context.get_accelerator_ids().get("GPU", []),
                "gpu_memory_utilization": gpu_memory_utilization(self.tier)}


def test_half_gpu_replicas_share_one_gpu_and_split_its_memory(base_url):
    tier = LLMConfig(name="probe", deployment=DeploymentOptions(
        num_replicas=2, num_gpus=0.5, num_cpus=0.01))
    # Asked over HTTP, not through a handle: on the throughput-optimized data path a handle
    # routes on its caller's event loop, which a synchronous test does not have.
    serve.run(Where.options(**tier.deployment.serve_options("probe")).bind(tier),
              name="placement", route_prefix="/placement")
    try:
        seen = {}
        for _ in range(100):  # the HTTP route of a new app appears within a few seconds
            r = httpx.get(f"{base_url}/placement", timeout=30)
            if r.status_code == 200:
                seen[r.json()["replica"]] = r.json()
            if len(seen) == 2:
                break
            time.sleep(0.2)
        assert len(seen) == 2
        assert all(len(r["gpu_ids"]) == 1 for r in seen.values())  # each sees one GPU...
        assert len({r["gpu_ids"][0] for r in seen.values()}) == 1  # ...the same one
        assert {r["gpu_memory_utilization"] for r in seen.values()} == {0.45}
        assert ray.available_resources().get("GPU", 0) == 1.0  # 2 x 0.5 = one GPU in use
    finally:
        serve.delete("placement")

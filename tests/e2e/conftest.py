"""One real graph per test session: Ray on loopback, the packaged models, the default config."""

import copy
import os
import time

import httpx
import openai
import pytest

from benchmarks.peers import serve_env, stop_orphaned_haproxy
from tests.helpers import (  # noqa: F401  (e2e tests import them)
    config_args,
    vllm_processes,
    wait_until,
)

# The data path `make` exports (cluster/serve.env), also for a bare `pytest` run: the tests' Ray
# inherits this environment.
for _name, _value in serve_env().items():
    os.environ.setdefault(_name, _value)

PORT = int(os.environ.get("GRAPHSERVE_TEST_PORT", "18000"))
METRICS_PORT = PORT + 1  # Ray's Prometheus endpoint, on loopback like everything else here
BASE = f"http://127.0.0.1:{PORT}"
TEST_API_KEY = "test-key-not-secret"  # in the env of every Ray process; only /locked uses it
BROKEN = "/nonexistent/model"  # a model_source that fails to load: a deployment that stays down


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


def without_canary(args: dict) -> dict:
    """The shipped args with the quality canary off: its rounds would add engine requests to the
    exact metric counts and the tight queues these tests measure (test_canary.py runs it)."""
    args = copy.deepcopy(args)
    args.setdefault("router", {}).setdefault("canary", {})["interval_s"] = 0
    return args


@pytest.fixture(scope="session")
def base_url():
    import ray
    from ray import serve

    import graph

    started = time.monotonic()
    # 4 logical CPUs on 2 cores: room for the main graph (2.0) and the small failure-test apps;
    # 2 fake GPUs: Ray only counts them, so placement by GPU fraction is testable without CUDA.
    # address="local": always a fresh Ray of its own, never one a `ray start` left on the host.
    ray.init(address="local", num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False,
             _metrics_export_port=METRICS_PORT,
             # Export every 5 s (default 10 s) so the scrape test waits less; gauges live for two
             # export periods, so a busy replica's gauges must not age out between exports.
             _system_config={"metrics_report_interval_ms": 5000},
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                                       "GRAPHSERVE_TEST_KEY": TEST_API_KEY}})
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    run_graph(without_canary(config_args()), "graphserve", "")
    print(f"\ngraph ready in {time.monotonic() - started:.1f} s")
    yield BASE
    serve.shutdown()
    ray.shutdown()
    stop_orphaned_haproxy()
    # No engine outlives its replica, however Serve ended it (deployments/reaper.py).
    wait_until(lambda: not vllm_processes(), 30, "every vLLM process to end with its replica")


@pytest.fixture(scope="session")
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def http(base_url):
    with httpx.Client(base_url=base_url, timeout=120) as c:
        yield c


# -- extra applications next to the main graph (failure and security tests) --------------------


def variant(tiers: list[dict], embedder_source: str) -> dict:
    args = without_canary(config_args())
    fast = args["tiers"][0]
    args["tiers"] = [{**copy.deepcopy(fast), **t} for t in tiers]
    args["embedder"]["model_source"] = embedder_source
    # One embedder replica in the extra apps: their overload and failure figures assume one.
    embedder = {k: v for k, v in args["embedder"]["deployment"].items() if k != "autoscaling"}
    args["embedder"]["deployment"] = {**embedder, "num_cpus": 0.1, "num_replicas": 1}
    return args


def run_graph(args: dict, name: str, prefix: str, broken: bool = False,
              blocking: bool = True) -> None:
    """The graph's two applications as serve_config.yaml runs them: the embeddings one (named
    by `args`, `embeddings` by default) at `prefix/v1/embeddings`, then the graph at `prefix`.
    `broken`: one of their deployments is meant to fail (Serve then raises once it gives up on
    it, while the rest keeps running)."""
    from ray import serve

    import graph

    if name != "graphserve":
        args = copy.deepcopy(args)
        args["embedder"]["app_name"] = f"{name}-embeddings"
    apps = [(graph.embeddings_builder, args["embedder"].get("app_name", "embeddings"),
             f"{prefix}/v1/embeddings"), (graph.app_builder, name, prefix or "/")]
    for builder, app_name, route_prefix in apps:
        try:
            serve._run(builder(args), name=app_name, route_prefix=route_prefix,
                       _blocking=blocking)
        except RuntimeError:
            if not broken:
                raise


def deploy(name: str, args: dict, broken: bool = False) -> None:
    """Runs an app (its two Serve applications) next to the main graph."""
    run_graph(args, name, f"/{name}", broken)


def remove(name: str) -> None:
    """Deletes an app that `deploy` ran: both its applications, side by side (each drains its
    replicas first: graceful_shutdown_timeout_s)."""
    from ray import serve

    names = {name, f"{name}-embeddings"}
    for app in names:
        serve.delete(app, _blocking=False)
    wait_until(lambda: not names & set(serve.status().applications), 120,
               f"{sorted(names)} to be deleted")

"""One real graph per test session: Ray on loopback, the packaged models, the default config."""

import os
import time

import httpx
import openai
import pytest
import yaml

PORT = int(os.environ.get("GRAPHSERVE_TEST_PORT", "18000"))
BASE = f"http://127.0.0.1:{PORT}"


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def base_url():
    import ray
    from ray import serve

    import graph

    with open("serve_config.yaml") as f:
        args = yaml.safe_load(f)["applications"][0]["args"]
    started = time.monotonic()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    serve.run(graph.app_builder(args), name="graphserve", route_prefix="/")
    print(f"\ngraph ready in {time.monotonic() - started:.1f} s")
    yield BASE
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def http(base_url):
    with httpx.Client(base_url=base_url, timeout=120) as c:
        yield c

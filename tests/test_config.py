"""The config tree: what a bad YAML turns into, and what Serve is given."""

import pytest
import yaml
from pydantic import ValidationError

from deployments.config import DeploymentOptions, GraphConfig, RouterConfig
from deployments.failures import SERVE_BACKPRESSURE


def serve_args() -> dict:
    with open("serve_config.yaml") as f:
        return yaml.safe_load(f)["applications"][0]["args"]


def test_serve_config_is_valid_ray_serve_and_graph_config():
    from ray.serve.schema import ServeDeploySchema

    with open("serve_config.yaml") as f:
        ServeDeploySchema.model_validate(yaml.safe_load(f))
    cfg = GraphConfig.model_validate(serve_args())
    assert [t.name for t in cfg.tiers] == ["fast", "careful"]
    assert cfg.embedder.model_id == "all-minilm-l6-v2"


def test_app_builder_builds_the_graph_without_starting_ray():
    import graph

    app = graph.app_builder(serve_args())
    assert app is not None


def test_config_rejects_typos_and_duplicate_names():
    with pytest.raises(ValidationError):
        GraphConfig.model_validate({"tiers": [{"name": "a", "max_modle_len": 5}]})
    with pytest.raises(ValidationError):
        GraphConfig.model_validate({"tiers": [{"name": "router"}]})


def test_deployment_options_map_to_serve():
    opts = DeploymentOptions(num_gpus=0.5, resources={"llm_node": 1}).serve_options("llm")
    assert opts["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.5, "resources": {"llm_node": 1}}
    auto = DeploymentOptions.model_validate({"autoscaling": {"max_replicas": 3}}).serve_options("x")
    assert auto["num_replicas"] == "auto" and auto["autoscaling_config"]["max_replicas"] == 3
    assert "max_replicas_per_node" not in auto  # Serve's own default unless set
    spread = DeploymentOptions(num_replicas=2, max_replicas_per_node=1).serve_options("router")
    assert spread["max_replicas_per_node"] == 1
    # A full queue that Serve answers itself says "busy, retry soon", as our own 429 does.
    assert opts["backpressure_config"] == SERVE_BACKPRESSURE == {"status_code": 429,
                                                                 "retry_after_s": 1}


def test_the_gate_budget_must_end_before_the_request_timeout():
    with pytest.raises(ValidationError, match="gate_budget_s"):
        RouterConfig(gate_budget_s=120, request_timeout_s=120)
    with pytest.raises(ValidationError, match="max_queued_requests"):
        DeploymentOptions(max_queued_requests=0)




def test_the_api_key_comes_from_the_environment_and_can_be_required():
    plain = RouterConfig()
    assert plain.api_key({}) is None and plain.api_key({"GRAPHSERVE_API_KEY": ""}) is None
    assert plain.api_key({"GRAPHSERVE_API_KEY": "k"}) == "k"
    required = RouterConfig(require_api_key=True, api_key_env="KEY")
    assert required.api_key({"KEY": "k"}) == "k"
    for environ in ({}, {"KEY": ""}, {"GRAPHSERVE_API_KEY": "k"}):
        with pytest.raises(ValueError, match="KEY is unset or empty"):
            required.api_key(environ)

"""Config tree and protocol validation: what a bad YAML or a bad body turns into."""

import pytest
import yaml
from pydantic import ValidationError

from deployments.config import DeploymentOptions, GraphConfig, LLMConfig
from deployments.llm import engine_dtype, gpu_memory_utilization, resolve_max_tokens
from deployments.protocol import (
    BadRequest,
    ChatCompletionRequest,
    EmbeddingRequest,
    ModelNotFound,
    QualityOverride,
    Sampling,
)


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


def test_dtype_and_gpu_fraction():
    assert engine_dtype("auto", has_cuda=False, cpu_has_bf16=False) == "float32"
    assert engine_dtype("auto", has_cuda=False, cpu_has_bf16=True) == "bfloat16"
    assert engine_dtype("auto", has_cuda=True, cpu_has_bf16=False) == "auto"
    assert engine_dtype("float16", has_cuda=False, cpu_has_bf16=False) == "float16"
    half = LLMConfig(name="a", deployment=DeploymentOptions(num_gpus=0.5))
    assert gpu_memory_utilization(half) == 0.45
    assert gpu_memory_utilization(LLMConfig(name="a", gpu_memory_utilization=0.3)) == 0.3


def test_max_tokens_caps_and_context():
    cfg = LLMConfig(name="a", max_model_len=100, max_tokens_cap=50)
    assert resolve_max_tokens(Sampling(), cfg, prompt_tokens=90) == 10  # default fits the room
    assert resolve_max_tokens(Sampling(max_tokens=5), cfg, 10) == 5
    with pytest.raises(BadRequest, match="at most 50") as e:
        resolve_max_tokens(Sampling(max_tokens=51), cfg, 10)
    assert e.value.param == "max_tokens"
    with pytest.raises(BadRequest, match="context of 100"):
        resolve_max_tokens(Sampling(max_tokens=20), cfg, 90)
    with pytest.raises(BadRequest, match="100 tokens") as e:
        resolve_max_tokens(Sampling(), cfg, 100)
    assert e.value.code == "context_length_exceeded"


@pytest.mark.parametrize("body, field", [
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m"}, "messages"),
    ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": -1}, "temperature"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 17}, "n"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "content"),
])
def test_chat_request_validation_names_the_field(body, field):
    with pytest.raises(ValidationError) as e:
        ChatCompletionRequest.model_validate(body)
    assert field in str(e.value)


def test_embedding_and_override_validation():
    assert EmbeddingRequest(model="e", input="hi").texts() == ["hi"]
    for bad in ([], [""], ""):
        with pytest.raises(ValidationError):
            EmbeddingRequest(model="e", input=bad)
    with pytest.raises(ValidationError):
        QualityOverride(threshold=1.5)


def test_api_errors_survive_pickling_with_their_fields():
    import pickle

    err = pickle.loads(pickle.dumps(ModelNotFound("no such model", param="model")))
    assert err.status == 404 and err.param == "model"
    assert err.body() == {"error": {"message": "no such model", "type": "invalid_request_error",
                                    "param": "model", "code": "model_not_found"}}

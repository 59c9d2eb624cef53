"""Config tree and protocol validation: what a bad YAML or a bad body turns into."""

import pytest
import yaml
from pydantic import ValidationError

from deployments.config import DeploymentOptions, GraphConfig, LLMConfig
from deployments.llm import engine_dtype, gpu_memory_utilization, resolve_max_tokens
from deployments.protocol import (
    BadRequest,
    ChatCompletionRequest,
    CompletionRequest,
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
    ({"model": "m", "messages": [{"role": "user", "content": "x"}],
      "stream_options": {"include_usage": True}}, "stream_options"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"a": 1}},
     "logit_bias"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}],
      "response_format": {"type": "json_schema"}}, "json_schema"),
])
def test_chat_request_validation_names_the_field(body, field):
    with pytest.raises(ValidationError) as e:
        ChatCompletionRequest.model_validate(body)
    assert field in str(e.value)


def test_vllm_s_request_semantics():
    """Where OpenAI leaves room, `vllm serve`'s reading (tests/conformance.py checks it live)."""
    user = [{"role": "user", "content": "x"}]
    both = ChatCompletionRequest.model_validate(
        {"messages": user, "max_tokens": 20, "max_completion_tokens": 4})
    assert both.model is None and both.max_tokens == 4  # no model: the first; the newer field wins
    chat = ChatCompletionRequest.model_validate({"model": "m", "messages": user, "n": 2,
                                                 "stream": True, "logit_bias": {"7042": -100}})
    assert chat.logit_bias_ids() == {7042: -100}
    schema = {"type": "object"}
    formats = [({"type": "text"}, None), ({"type": "json_object"}, {"json_object": True}),
               ({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
                {"json": schema})]
    for given, structured in formats:
        request = ChatCompletionRequest.model_validate(
            {"model": "m", "messages": user, "response_format": given})
        assert request.response_format.structured() == structured
    texts = CompletionRequest.model_validate({"model": "m", "prompt": ["a", "b"], "logprobs": 20})
    assert texts.prompts() == ["a", "b"]
    for bad in ({"prompt": []}, {"prompt": ["a", ""]}, {"prompt": "a", "echo": True},
                {"prompt": "a", "suffix": "b"}, {"prompt": "a", "logprobs": 21}):
        with pytest.raises(ValidationError):
            CompletionRequest.model_validate({"model": "m", **bad})


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

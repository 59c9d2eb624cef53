"""The OpenAI protocol models: what a bad body turns into, and how a request becomes sampling."""

import pytest
from pydantic import ValidationError

from deployments.config import SamplingDefaults
from deployments.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ModelNotFound,
    QualityOverride,
    Sampling,
)


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
    """Where OpenAI leaves room, `vllm serve`'s reading (tests/e2e/conformance.py checks it live)."""
    user = [{"role": "user", "content": "x"}]
    both = ChatCompletionRequest.model_validate(
        {"messages": user, "max_tokens": 20, "max_completion_tokens": 4})
    assert both.model is None and both.max_tokens == 4  # no model: the first; the newer field wins
    chat = ChatCompletionRequest.model_validate({"model": "m", "messages": user, "n": 2,
                                                 "stream": True, "logit_bias": {"7042": -100}})
    assert chat.sampling().logit_bias == {7042: -100}
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


def test_a_request_becomes_engine_sampling_in_one_step():
    """Every sampling field the wire model shares with `Sampling` carries over by name; the few
    that change shape are converted; what the client left unset stays None."""
    chat = ChatCompletionRequest.model_validate({
        "model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2, "temperature": 0.5,
        "top_p": 0.9, "seed": 3, "presence_penalty": 0.5, "frequency_penalty": -0.5,
        "repetition_penalty": 1.1, "top_k": 20, "min_p": 0.05, "min_tokens": 2, "stop": "END",
        "max_completion_tokens": 9, "logprobs": True, "top_logprobs": 3,
        "response_format": {"type": "json_object"}})
    assert chat.sampling() == Sampling(
        n=2, max_tokens=9, temperature=0.5, top_p=0.9, stop=["END"], seed=3, presence_penalty=0.5,
        frequency_penalty=-0.5, repetition_penalty=1.1, top_k=20, min_p=0.05, min_tokens=2,
        structured={"json_object": True}, top_logprobs=3)
    bare = CompletionRequest.model_validate({"model": "m", "prompt": "x", "logprobs": 2}).sampling()
    assert (bare.temperature, bare.top_p, bare.repetition_penalty, bare.max_tokens) == (
        None, None, None, 16)
    assert bare.top_logprobs == 2 and bare.stop == [] and bare.presence_penalty == 0.0
    # Every field of the wire model that vLLM samples with is read (a new one must be mapped).
    shared = set(Sampling.model_fields) & set(ChatCompletionRequest.model_fields)
    assert shared >= {"n", "max_tokens", "temperature", "top_p", "seed", "top_k", "min_p"}


def test_defaults_fill_only_what_the_client_left_unset():
    defaults = SamplingDefaults(temperature=0.7, top_p=0.95, repetition_penalty=1.05)
    filled = Sampling().with_defaults(defaults)
    assert (filled.temperature, filled.top_p, filled.repetition_penalty) == (0.7, 0.95, 1.05)
    assert (filled.top_k, filled.min_p, filled.max_tokens) == (0, 0.0, None)
    given = Sampling(temperature=0, top_p=0.5, repetition_penalty=1.0, top_k=5)
    assert given.with_defaults(defaults) == given.model_copy(update={"min_p": 0.0})
    assert filled.with_defaults(defaults) == filled  # applying twice changes nothing
    fields = filled.engine_fields()
    assert "structured" not in fields and "max_tokens" not in fields and fields["temperature"] == 0.7

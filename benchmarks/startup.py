"""Where an LLM replica's start goes: `python -m benchmarks.startup` (`make bench-startup`).

Plain processes, no Ray, the shipped config's `fast` tier, one after another on this host:

- `vllm serve` on the same weights, dtype and KV cache: launch to its first answer (the peer);
- one engine built as the LLM deployment builds it (`deployments.llm.engine_args` and
  `cpu_engine_env`), its phases timed: torch and vLLM imports, `start_engine` (the
  engine-core process, forked or spawned as the tier's `engine_core_start` says: the weights, the
  KV cache; vLLM's log lines give those two), the warm-up request (with logprobs, as the deployment's, since the router asks for them),
  then 8 greedy streams of 64 tokens twice (decode tokens/s);
- the same with vLLM's default for a CPU engine, the model in a worker process of its own
  (`VLLM_ENABLE_V1_MULTIPROCESSING=1`): what the deployment's choice saves;
- the same with torch.compile left on (`TORCH_COMPILE_DISABLE` unset), which compiles a sampler
  helper with inductor on the first logprobs request: with an empty inductor cache (a fresh
  machine) and with the cache that run left (a restart on the same machine);
- the same with torch and vLLM imported with Python's garbage collector on and nothing frozen (as
  before the deployment's `collector_paused`);
- two engines at once, as the deployment builds them: both tiers of the default graph loading side
  by side on the same cores.

Writes benchmarks/results/startup.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.overhead import first_answer
from benchmarks.peers import ROOT, VLLMServer, fast_tier
from benchmarks.report import write_results
from deployments.llm import cpu_engine_env

RESULTS = ROOT / "benchmarks" / "results"

# Runs in a fresh interpreter: what a replica does from its first import to its warm-up answer.
ENGINE = r"""
import asyncio, contextlib, gc, json, os, sys, time
t0 = time.monotonic()
def mark(name):
    print("PHASE " + json.dumps({name: round(time.monotonic() - t0, 2)}), flush=True)
from deployments.llm import collector_paused, engine_args, engine_dtype, llm_folder, start_engine
mark("deployment module imported")  # what Ray's worker has imported before the constructor
imports = contextlib.nullcontext if os.environ.get("COLLECTOR_ON") == "1" else collector_paused
with imports():
    import torch
mark("torch imported")
with imports():
    import vllm.v1.engine.async_llm
mark("vllm imported")
import psutil
print("FROZEN " + json.dumps(gc.get_freeze_count()), flush=True)
print("RSS " + json.dumps(psutil.Process().memory_info().rss >> 20), flush=True)
from benchmarks.peers import fast_tier
from deployments.protocol import GenerationRequest, Sampling
tier = fast_tier()
dtype = engine_dtype(tier.dtype, False, torch.cpu._is_avx512_bf16_supported())
args = engine_args(tier, llm_folder(tier.model_source), dtype, None)
args.worker_extension_cls = ""  # the deployment's heap release (deployments/heap.py): not timed here
async def main():
    from vllm import SamplingParams
    engine = start_engine(args, [], fork=tier.engine_core_start == "fork")
    mark("engine ready")
    warmup = SamplingParams(max_tokens=2, temperature=0, logprobs=5)
    async for _ in engine.generate("Hello", warmup, "warmup"):
        pass
    mark("warm-up answered")
    if os.environ.get("DECODE") == "1":
        async def one(i):
            params = SamplingParams(max_tokens=64, temperature=0, ignore_eos=True)
            async for out in engine.generate(f"Tell me about the sea, part {i}.", params, f"r{i}"):
                made = len(out.outputs[0].token_ids)
            return made
        started = time.monotonic()
        made = sum([sum(await asyncio.gather(*(one(i) for i in range(8)))) for _ in range(2)])
        print("DECODE " + json.dumps(round(made / (time.monotonic() - started), 1)), flush=True)
    engine.shutdown()
asyncio.run(main())
"""

# vLLM's own log lines for what happens inside the engine-core process.
VLLM_PHASES = {
    "weights loaded (vLLM)": re.compile(r"Loading weights took ([\d.]+) seconds"),
    "KV cache and warm-up (vLLM)": re.compile(r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s"),
}


# The one-engine settings: a label, and what each changes in the deployment's environment
# (None: removed). The compile runs get an inductor cache of their own (`engines`).
SETTINGS = {
    "one": ("one engine, model in the engine core (the deployment)", {}),
    # torch and vLLM imported as before session 23: the collector on, nothing frozen
    "collector_on": ("one engine, imports with the garbage collector on", {"COLLECTOR_ON": "1"}),
    "one_worker_process": ("one engine, model in a worker process (vLLM's CPU default)",
                           {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}),
    "compile_cold": ("one engine, torch.compile on, empty inductor cache",
                     {"TORCH_COMPILE_DISABLE": None}),
    "compile_warm": ("one engine, torch.compile on, the cache of the run before",
                     {"TORCH_COMPILE_DISABLE": None}),
}


def engines(count: int, changes: dict | None = None, decode: bool = False,
            inductor_cache: str | None = None) -> list[dict]:
    """`count` engines started at the same moment; each one's phases (seconds since its launch),
    and with `decode` its decode tokens/s. `changes`: to the deployment's engine environment."""
    env = {**os.environ, "OMP_NUM_THREADS": str(fast_tier().engine_threads or 2),
           **cpu_engine_env(fast_tier().compile), "VLLM_CONFIGURE_LOGGING": "1",
           "VLLM_LOGGING_LEVEL": "INFO", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           "DECODE": "1" if decode else "0"}
    for key, value in (changes or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    if inductor_cache:
        env["TORCHINDUCTOR_CACHE_DIR"] = inductor_cache
    logs = [tempfile.TemporaryFile("w+") for _ in range(count)]
    started = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-c", ENGINE], cwd=ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT) for log in logs]
    out = []
    for proc, log in zip(procs, logs):
        proc.wait(900)
        log.seek(0)
        text = log.read()
        if proc.returncode != 0:
            raise RuntimeError(f"engine exited with {proc.returncode}:\n{text[-3000:]}")
        phases: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("PHASE "):
                phases.update(json.loads(line[6:]))
            if line.startswith("DECODE "):
                phases["decode tok/s"] = json.loads(line[7:])
            if line.startswith("FROZEN "):
                phases["objects frozen"] = json.loads(line[7:])
            if line.startswith("RSS "):
                phases["MiB resident after the imports"] = json.loads(line[4:])
            for name, pattern in VLLM_PHASES.items():
                if (m := pattern.search(line)):
                    phases[name] = float(m.group(1))
        out.append(phases)
    print(f"{count} engine(s): {out} ({time.monotonic() - started:.1f} s)", flush=True)
    return out


def vllm_serve_first_answer() -> float:
    """Launch to the first chat answer of `vllm serve`, as the overhead benchmark measures it."""
    with tempfile.TemporaryDirectory() as logs:
        server = VLLMServer(18123, Path(logs))
        try:
            server.start()
            return round(first_answer(server, fast_tier().model_id), 1)
        finally:
            server.stop()


def markdown(result: dict) -> str:
    phases = ["deployment module imported", "torch imported", "vllm imported", "engine ready",
              "warm-up answered", "warm-up (logprobs)", "decode tok/s", "objects frozen",
              "MiB resident after the imports"]

    def cell(run: dict, field: str):
        if field == "warm-up (logprobs)":  # the first request with logprobs
            return round(run["warm-up answered"] - run["engine ready"], 2)
        return run.get(field, "–")

    inner = list(VLLM_PHASES)
    lines = ["# Where an LLM replica's start goes (`python -m benchmarks.startup`)", "",
             f"{result['host']}; seconds since the process started (vLLM's own figures: "
             "durations inside the engine-core process).", "",
             "| run | " + " | ".join(phases + inner) + " |",
             "|---|" + "---|" * (len(phases) + len(inner))]
    labels = {**{key: label for key, (label, _) in SETTINGS.items()},
              "two": "two engines at once (the deployment)"}
    for key, runs in result["runs"].items():
        name = labels[key]
        for i, run in enumerate(runs):
            lines.append(f"| {name}{f' #{i + 1}' if len(runs) > 1 else ''} | " + " | ".join(
                str(cell(run, p)) for p in phases + inner) + " |")
    def median(key: str, field: str) -> float:
        return statistics.median(cell(run, field) for run in result["runs"][key])

    ready, ready_default = median("one", "warm-up answered"), median("one_worker_process", "warm-up answered")
    decode, decode_default = median("one", "decode tok/s"), median("one_worker_process", "decode tok/s")
    warmup = {key: round(median(key, "warm-up (logprobs)"), 2) for key in ("one", "compile_warm", "compile_cold")}
    lines += ["", f"Medians: `vllm serve` (the same engine settings), launch to its first answer "
              f"**{result['vllm_serve_s']} s** (one run); one engine as the deployment builds it, to "
              f"its warm-up answer **{ready} s** ({ready / result['vllm_serve_s']:.2f}×). The model in "
              f"the engine core instead of a worker process: its warm-up answer {ready - ready_default:+.1f} s "
              f"against that one's, decoding {decode:.1f} against {decode_default:.1f} tok/s "
              f"({decode / decode_default:.2f}×).",
              f"The warm-up, the first request with logprobs: **{warmup['one']} s** with torch.compile "
              f"off (the deployment), {warmup['compile_warm']} s with it on and a warm inductor cache, "
              f"**{warmup['compile_cold']} s** with an empty one; decoding {decode:.1f} against "
              f"{median('compile_warm', 'decode tok/s'):.1f} tok/s with it on."]

    def took(key: str, start: str, end: str) -> float:
        return round(statistics.median(r[end] - r[start] for r in result["runs"][key]), 2)

    lines += [f"Imports with the garbage collector paused, then frozen (the deployment, "
              f"{int(median('one', 'objects frozen')):,} objects), against it on: vLLM's import "
              f"**{took('one', 'torch imported', 'vllm imported')} s** against "
              f"{took('collector_on', 'torch imported', 'vllm imported')}, the engine's start "
              f"**{took('one', 'vllm imported', 'engine ready')} s** against "
              f"{took('collector_on', 'vllm imported', 'engine ready')}, the warm-up answer "
              f"**{median('one', 'warm-up answered')} s** against "
              f"{median('collector_on', 'warm-up answered')} from the process's start; "
              f"{int(median('one', 'MiB resident after the imports'))} MiB resident after the "
              f"imports against {int(median('collector_on', 'MiB resident after the imports'))}.",
              ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each one-engine setting, alternating (this host is noisy)")
    args = parser.parse_args()
    import platform

    import torch

    host = (f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
            f"AVX-512 BF16: {torch.cpu._is_avx512_bf16_supported()}")
    result = {"host": host, "vllm_serve_s": vllm_serve_first_answer(),
              "runs": {key: [] for key in SETTINGS}}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as inductor_cache:  # empty, then warmed by that run
            for key, (_, changes) in SETTINGS.items():
                result["runs"][key] += engines(1, changes, decode=True, inductor_cache=(
                    inductor_cache if key.startswith("compile") else None))
    result["runs"]["two"] = engines(2)
    write_results(args.out, "startup", result, markdown(result))


if __name__ == "__main__":
    main()

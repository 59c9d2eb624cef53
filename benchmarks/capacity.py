"""Capacity planning from measured curves: how many replicas of each deployment a target load
needs, and at what p95.

    python -m benchmarks.capacity --qps 2 --prompt-tokens 400 --output-tokens 200 [--p95-slo-s 30]

The LLM curve is throughput against concurrency for one replica (`results.json`, written by
`make bench`: `chat.<peer>.<concurrency>` with requests/s, TTFT, TPOT and end-to-end latency,
measured at `settings.max_tokens` output tokens on `benchmarks.load.PROMPTS`). Each measured
concurrency c is a way to run a replica. Its measured requests/s and p50/p95 latency are carried
to the target lengths by a latency model,

    e2e(c) = TTFT(c) x prompt_tokens / measured_prompt_tokens + TPOT(c) x (output_tokens - 1)

(prefill grows with the prompt, decoding with the answer, each at the pace measured at c): a
request modelled k times longer takes k times the measured latency, and a replica keeping c in
flight serves 1/k of the measured requests/s. At the measured lengths the plan is the
measurement; the model reproduces the graph's measured p50 and p95 within 12 %
(tests/test_capacity.py). The plan takes, per deployment, the concurrency that needs the fewest
replicas within the p95 objective; nothing is extrapolated beyond the measured concurrencies.

The gate adds embedder work: one call of 2 + `quality.samples` sentences per scored answer (the
prompt, the answer, the samples), sized on the embedder's HTTP curve; escalations send
`--escalation-rate` of the requests on to the next tier; the router is sized by its measured CPU
per request (`overhead.json`). `--profile serve_config` also prints each tier's autoscaling target
against the ceiling the gate's fan-out sets (a call's sequences x target <= `max_num_seqs`).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Option:
    """One way to run a deployment for the target load: at this concurrency per replica."""

    concurrency: int
    replicas: int
    per_replica_rps: float
    e2e_p50_s: float
    e2e_p95_s: float


@dataclass
class Plan:
    deployment: str
    load: str  # what it must serve, in words
    chosen: Option | None  # None: no measured concurrency meets the objective
    options: list[Option]


def replicas_needed(load: float, per_replica: float) -> int:
    """Replicas that serve `load` at `per_replica` each: none for no load, else at least one."""
    return max(1, math.ceil(load / per_replica)) if load > 0 else 0


def modelled_e2e_s(point: dict, prompt_scale: float, output_tokens: int, q: str) -> float:
    """End-to-end seconds at quantile `q` ("p50"/"p95") of a request at this curve point:
    prefill (TTFT, scaled by the prompt) plus one TPOT per further output token."""
    return (point[f"ttft_{q}_ms"] * prompt_scale
            + point[f"tpot_{q}_ms"] * (output_tokens - 1)) / 1000


def llm_options(curve: dict, qps: float, prompt_tokens: int, output_tokens: int,
                measured_prompt_tokens: float, measured_output_tokens: int) -> list[Option]:
    """Every measured concurrency as a way to serve `qps` requests of the target lengths: the
    measured requests/s and latencies, scaled by how much longer (or shorter) the latency model
    says a request of the target lengths takes there."""
    out = []
    for c, point in sorted(curve.items(), key=lambda kv: int(kv[0])):
        stretch = {q: modelled_e2e_s(point, prompt_tokens / measured_prompt_tokens, output_tokens, q)
                   / modelled_e2e_s(point, 1.0, measured_output_tokens, q) for q in ("p50", "p95")}
        rps = point["requests_per_s"] / stretch["p50"]
        out.append(Option(int(c), replicas_needed(qps, rps), round(rps, 4),
                          round(point["e2e_p50_ms"] * stretch["p50"] / 1000, 2),
                          round(point["e2e_p95_ms"] * stretch["p95"] / 1000, 2)))
    return out


def embedder_options(curve: dict, sentences_per_s: float) -> list[Option]:
    out = []
    for c, point in sorted(curve.items(), key=lambda kv: int(kv[0])):
        rate = point["sentences_per_s"]
        out.append(Option(int(c), replicas_needed(sentences_per_s, rate), rate,
                          round(point["p50_ms"] / 1000, 3),
                          round(point["p95_ms"] / 1000, 3)))
    return out


def choose(options: list[Option], p95_slo_s: float | None) -> Option | None:
    """The fewest replicas within the objective; on a tie, the lower p95."""
    fitting = [o for o in options if p95_slo_s is None or o.e2e_p95_s <= p95_slo_s]
    return min(fitting, key=lambda o: (o.replicas, o.e2e_p95_s), default=None)


def measured_prompt_tokens() -> float:
    """Mean chat-templated prompt length of the benchmark's prompts, in the served model's
    tokens (the curves were measured on them)."""
    from transformers import AutoTokenizer

    from benchmarks.load import PROMPTS
    from benchmarks.peers import fast_tier
    from deployments.models import chat_token_ids, llm_folder

    tokenizer = AutoTokenizer.from_pretrained(str(llm_folder(fast_tier().model_source)))
    lengths = [len(chat_token_ids(tokenizer, [{"role": "user", "content": p}])) for p in PROMPTS]
    return sum(lengths) / len(lengths)


def plan(results: dict, qps: float, prompt_tokens: int, output_tokens: int,
         prompt_tokens_measured: float, p95_slo_s: float | None = None,
         curve: str = "graph_gate_on", escalation_rate: float = 0.0, gate_samples: int = 4,
         embed_qps: float = 0.0, router_cpu_ms: float | None = None,
         router_cpus: float = 1.0) -> list[Plan]:
    """The replicas each deployment needs for `qps` chat requests per second (and `embed_qps`
    sentences per second of client embeddings)."""
    chat = results["chat"][curve]
    plans = []
    for tier, share in (("entry tier", 1.0), ("next tier (escalations)", escalation_rate)):
        if share <= 0:
            continue
        options = llm_options(chat, qps * share, prompt_tokens, output_tokens,
                              prompt_tokens_measured, results["settings"]["max_tokens"])
        plans.append(Plan(tier, f"{qps * share:g} requests/s", choose(options, p95_slo_s), options))
    gated = 0 if curve == "graph_gate_off" else qps * (1 + escalation_rate)
    sentences = gated * (2 + gate_samples) + embed_qps
    embedder = results["embeddings"]["graph_http"]
    options = embedder_options(embedder, sentences)
    plans.append(Plan("embedder", f"{sentences:g} sentences/s", choose(options, None), options))
    if router_cpu_ms is not None:
        per_replica = router_cpus * 1000 / router_cpu_ms  # requests/s one replica's CPUs serve
        option = Option(0, max(1, replicas_needed(qps, per_replica)), round(per_replica, 2), 0, 0)
        plans.append(Plan("router", f"{qps * router_cpu_ms / 1000:.2f} CPU-seconds/s", option,
                          [option]))
    return plans


def sequences_per_call(samples: int, sample_below: float, consensus_samples: int = 0) -> int:
    """The most sequences one call of the router keeps in a tier's engine (the gate's fan-out):
    the answer with its samples in one request (`sample_below` 1), a consensus tier's answer with
    its own samples, or the cascade's samples drawn after the answer (one call of `samples`)."""
    in_engine = samples if sample_below >= 1 else 0
    later = samples if 0 < sample_below < 1 else 0
    return max(1 + max(in_engine, consensus_samples), later)


def target_ceilings(args: dict) -> dict[str, dict]:
    """Per LLM tier of a serve config's `args`: the gate's fan-out and the most ongoing calls per
    replica whose sequences all fit the engine's batch (`max_num_seqs`); an autoscaling target
    above it queues calls inside the engine, where Serve's autoscaler cannot see them. The args
    are read as the graph reads them (`GraphConfig`: its defaults where a key is left out)."""
    from deployments.config import GraphConfig

    config = GraphConfig.model_validate(args)
    quality = config.router.quality
    samples = quality.samples if quality.enabled else 0
    out = {}
    for tier in config.tiers:
        fan_out = sequences_per_call(samples, quality.sample_below, tier.consensus_samples)
        autoscaling = tier.deployment.autoscaling
        out[tier.name] = {"sequences_per_call": fan_out, "max_num_seqs": tier.max_num_seqs,
                          "ceiling": max(1, tier.max_num_seqs // fan_out),
                          "target": autoscaling and autoscaling.target_ongoing_requests}
    return out


def router_cpu_ms(overhead: dict) -> float | None:
    """CPU-ms per streamed chat in the router replica and Serve's proxy (overhead.json)."""
    try:
        cpu = overhead["graph"]["default"]["chat_c16"]["cpu_ms_per_request"]
    except KeyError:
        return None
    return cpu.get("replica router", 0) + cpu.get("Serve proxy", 0)


def render(plans: list[Plan], args, measured: tuple[float, int]) -> str:
    lines = [f"Target: {args.qps:g} chat requests/s, {args.prompt_tokens} prompt tokens, "
             f"{args.output_tokens} output tokens"
             + (f", p95 <= {args.p95_slo_s:g} s" if args.p95_slo_s else ""),
             f"Curves: {args.results.name} ({args.curve}), measured at {measured[0]:.0f} prompt "
             f"and {measured[1]} output tokens per request", ""]
    for p in plans:
        c = p.chosen
        head = (f"{p.deployment}: {p.load} -> " + (
            "no measured concurrency meets the objective" if c is None else
            f"{c.replicas} replica(s)" + (f" at concurrency {c.concurrency} each, p95 "
                                          f"{c.e2e_p95_s:g} s" if c.concurrency else "")))
        lines.append(head)
        if p.deployment != "router":
            lines.append("  concurrency  replicas  per-replica rate  p50 s  p95 s")
            for o in p.options:
                lines.append(f"  {o.concurrency:>11}  {o.replicas:>8}  {o.per_replica_rps:>16g}"
                             f"  {o.e2e_p50_s:>5g}  {o.e2e_p95_s:>5g}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qps", type=float, required=True, help="chat requests per second")
    parser.add_argument("--prompt-tokens", type=int, required=True)
    parser.add_argument("--output-tokens", type=int, required=True)
    parser.add_argument("--p95-slo-s", type=float, help="end-to-end p95 objective, seconds")
    parser.add_argument("--results", type=Path, default=RESULTS / "results.json")
    parser.add_argument("--curve", default="graph_gate_on",
                        help="which chat curve of the results (graph_gate_on, graph_gate_off, ...)")
    parser.add_argument("--measured-prompt-tokens", type=float,
                        help="prompt length the curve was measured at (default: the benchmark "
                             "prompts through the served model's tokenizer)")
    parser.add_argument("--escalation-rate", type=float, default=0.0,
                        help="share of requests the gate sends on to the next tier")
    parser.add_argument("--gate-samples", type=int, default=4, help="router.quality.samples")
    parser.add_argument("--embed-qps", type=float, default=0.0,
                        help="client /v1/embeddings sentences per second")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--profile", type=Path, default=None,
                        help="a serve config (e.g. cluster/serve_config.gpu.yaml): also print "
                        "each tier's autoscaling target against the ceiling its fan-out sets")
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    overhead_file = args.results.parent / "overhead.json"
    router_ms = router_cpu_ms(json.loads(overhead_file.read_text())) if overhead_file.exists() else None
    measured = (args.measured_prompt_tokens or measured_prompt_tokens(),
                results["settings"]["max_tokens"])
    plans = plan(results, args.qps, args.prompt_tokens, args.output_tokens, measured[0],
                 args.p95_slo_s, args.curve, args.escalation_rate, args.gate_samples,
                 args.embed_qps, router_ms)
    print(json.dumps([asdict(p) for p in plans], indent=1) if args.json
          else render(plans, args, measured))
    if args.profile is not None:
        import yaml

        ceilings = target_ceilings(yaml.safe_load(args.profile.read_text())["applications"][0]["args"])
        print(f"\nAutoscaling targets, {args.profile} (ongoing calls per replica):")
        for name, t in ceilings.items():
            print(f"  {name}: {t['sequences_per_call']} sequences per call, max_num_seqs "
                  f"{t['max_num_seqs']} -> at most {t['ceiling']}; target {t['target']}")


if __name__ == "__main__":
    main()

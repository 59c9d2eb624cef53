"""The capacity planner (`benchmarks/capacity.py`) against the measured curves it fits."""

import json

import pytest
import yaml

from benchmarks import capacity

RESULTS = json.loads((capacity.RESULTS / "results.json").read_text())
CURVE = RESULTS["chat"]["graph_gate_on"]
MEASURED_OUTPUT = RESULTS["settings"]["max_tokens"]
PROMPT = 40.0  # any measured prompt length: at the measured lengths its scale is 1


@pytest.mark.parametrize("peer", ["graph_gate_on", "graph_gate_off"])
def test_the_latency_model_reproduces_the_measured_curve(peer):
    """TTFT + TPOT x (output - 1) against the measured end-to-end p50 and p95 at every measured
    concurrency: within 12 % (the claim the planner's scaling rests on)."""
    for c, point in RESULTS["chat"][peer].items():
        for q in ("p50", "p95"):
            modelled = capacity.modelled_e2e_s(point, 1.0, MEASURED_OUTPUT, q)
            assert modelled == pytest.approx(point[f"e2e_{q}_ms"] / 1000, rel=0.12), (c, q)


def test_at_the_measured_lengths_the_plan_is_the_measurement():
    for option in capacity.llm_options(CURVE, 1.0, PROMPT, MEASURED_OUTPUT, PROMPT,
                                       MEASURED_OUTPUT):
        point = CURVE[str(option.concurrency)]
        assert option.per_replica_rps == pytest.approx(point["requests_per_s"], abs=1e-4)
        assert option.e2e_p95_s == pytest.approx(point["e2e_p95_ms"] / 1000, abs=0.01)


def plan(**kw):
    args = {"qps": 2.0, "prompt_tokens": 400, "output_tokens": 200,
            "prompt_tokens_measured": PROMPT, **kw}
    return {p.deployment: p for p in capacity.plan(RESULTS, **args)}


def test_more_load_or_longer_answers_need_more_replicas_never_fewer():
    base = plan()["entry tier"].chosen.replicas
    assert plan(qps=4.0)["entry tier"].chosen.replicas >= 2 * base - 1
    assert plan(output_tokens=400)["entry tier"].chosen.replicas > base
    assert plan(qps=0.01)["entry tier"].chosen.replicas == 1


def test_the_objective_picks_the_concurrency_and_an_impossible_one_is_said():
    loose, tight = plan(p95_slo_s=200)["entry tier"], plan(p95_slo_s=25)["entry tier"]
    assert loose.chosen.concurrency > tight.chosen.concurrency
    assert loose.chosen.replicas < tight.chosen.replicas
    assert tight.chosen.e2e_p95_s <= 25 and loose.chosen.e2e_p95_s <= 200
    assert plan(p95_slo_s=0.5)["entry tier"].chosen is None


def test_the_gate_adds_embedder_work_and_escalations_a_second_tier():
    plans = plan(escalation_rate=0.25, gate_samples=4, embed_qps=10)
    assert plans["embedder"].load == f"{2.0 * 1.25 * 6 + 10:g} sentences/s"
    assert plans["next tier (escalations)"].load == "0.5 requests/s"
    assert plan(curve="graph_gate_off")["embedder"].load == "0 sentences/s"
    router = plan(router_cpu_ms=50.0, router_cpus=1.0)["router"].chosen
    assert router.replicas == 1 and plan(qps=30.0, router_cpu_ms=50.0)["router"].chosen.replicas == 2


def test_the_gate_s_fan_out_sets_each_tier_s_autoscaling_ceiling():
    """Issue 28 item 6: a call's sequences (the answer with in-engine samples, a consensus tier's
    own, or the cascade's samples after the answer) times the target must fit `max_num_seqs`."""
    assert capacity.sequences_per_call(4, 1.0) == 5  # answer + 4 samples in one request
    assert capacity.sequences_per_call(4, 0.3) == 4  # the cascade: answer, then 4 in one call
    assert capacity.sequences_per_call(4, 0.0) == 1  # scored once, no samples
    assert capacity.sequences_per_call(4, 0.3, consensus_samples=8) == 9
    in_engine = {"router": {"quality": {"samples": 4, "sample_below": 1.0}},
                 "tiers": [{"name": "t", "max_num_seqs": 128,
                            "deployment": {"autoscaling": {"target_ongoing_requests": 32}}}]}
    assert capacity.target_ceilings(in_engine)["t"] == {
        "sequences_per_call": 5, "max_num_seqs": 128, "ceiling": 25, "target": 32}


def test_the_profiles_autoscaling_targets_fit_their_engines_batches():
    for path in ("cluster/serve_config.gpu.yaml", "serve_config.yaml"):
        args = yaml.safe_load(open(path))["applications"][0]["args"]
        for name, t in capacity.target_ceilings(args).items():
            assert t["target"] is None or t["target"] <= t["ceiling"], (path, name, t)

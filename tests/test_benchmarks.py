"""A smoke run of the benchmark code (statistics, ratios, table, plots) on made-up numbers.

The benchmark itself (`make bench`) starts real servers and takes minutes; timings are never
asserted in `make test`.
"""

import asyncio
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from benchmarks import load, report


def level(tok_s: float, ttft_ms: float) -> dict:
    samples = [load.Sample(ok=True, ttft=ttft_ms / 1000, e2e=1.0, tokens=64, itl=[0.05, 0.06],
                           last=ttft_ms / 1000 + 63 * 0.02)
               for _ in range(4)] + [load.Sample(ok=False)]
    summary = load.summarize(samples, wall=4 * 64 / tok_s)
    assert summary["failed"] == 1 and summary["tokens"] == 256
    assert summary["tpot_p50_ms"] == 20.0  # per token, however many tokens a chunk carried
    return summary


def test_ratios_table_and_plots(tmp_path):
    results = {
        "settings": {"max_tokens": 64},
        "chat": {"vllm_serve": {1: level(13, 100), 16: level(100, 300)},
                 "graph_gate_off": {1: level(12.5, 103), 16: level(97, 310)},
                 "graph_gate_on": {1: level(12, 104), 16: level(90, 320)}},
        "embeddings": {"in_process": {"batched": {"sentences_per_s": 400.0},
                                      "one_by_one": {"sentences_per_s": 50.0}},
                       "graph_http": {32: {"sentences_per_s": 340.0, "p50_ms": 9, "p95_ms": 20,
                                           "failed": 0}}},
        "cold_start_s": {"vllm_serve": 50.0, "graph": 100.0},
        "scoring": {"overhead_pct_p50": 2.0, "overhead_pct_p95": 6.0},
    }
    ratios = report.ratios(results)
    results["ratios"] = ratios
    assert ratios["chat_throughput_c16_vs_vllm_serve"]["met"] is True
    assert ratios["ttft_p50_overhead_c1_ms"]["value"] == 3.0
    assert ratios["embed_http_c32_vs_in_process_batched"]["value"] == 0.85
    assert ratios["cold_start_graph_vs_vllm_serve"]["met"] is False
    table = report.markdown(results)
    assert "| graph_gate_on | 16 |" in table and "**no**" in table
    report.plots(results, tmp_path)
    assert (tmp_path / "chat.png").stat().st_size > 0 and (tmp_path / "embeddings.png").exists()


def test_run_concurrent_bounds_concurrency():
    active, peak = 0, 0

    async def one(i: int) -> load.Sample:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.001)
        active -= 1
        return load.Sample(ok=True, tokens=i)

    samples, wall = asyncio.run(load.run_concurrent(one, 20, 4))
    assert len(samples) == 20 and peak == 4 and wall > 0
    assert sorted(s.tokens for s in samples) == list(range(20))
    assert load.pct([1, 2, 3, 4, 5], 50) == 3 and load.pct([1, 2, 3, 4, 5], 95) == 5


def test_quality_gate_table_and_plot(tmp_path):
    from benchmarks import quality_gate

    qs = quality_gate.pick_questions(30)
    assert len(qs) == 30 and len({q.kind for q in qs}) >= 20  # spread over topics and kinds
    assert sum(q.id.startswith("nq-") for q in qs) == 15  # half of them as people ask
    rows = [{"id": f"q{i}", "status": 200, "latency_s": 0.1, "right": i < 2, "tokens": 20,
             "escalated": False, "passed": True} for i in range(3)]
    rows.append({"id": "q3", "status": 503, "latency_s": 9.0, "right": False, "tokens": 0,
                 "escalated": False, "passed": None})
    policy = quality_gate.summarise(rows)
    # Every request counted: 2 right of 4 sent (not of the 3 answered); the failure's latency
    # is in the percentiles; tokens are per answered request.
    assert policy["accuracy"] == 0.5 and policy["failed"] == 1
    assert policy["failed_by_status"] == {"503": 1} and policy["latency_p95_ms"] == 9000.0
    assert policy["tokens_per_answer"] == 20.0 and policy["requests"] == 4
    result = {"questions": 30, "concurrency": 8,
              "policies": {name: dict(policy) for name in quality_gate.POLICIES},
              "accuracy_gain_points": {name: 0.0 for name in quality_gate.POLICIES},
              "p50_vs_greedy": {name: 1.25 for name in quality_gate.POLICIES}}
    table = quality_gate.markdown(result)
    assert "| gate, default config | 50.0% | +0.0 pt | 1 (1× 503) | 0% | 0% |" in table
    assert "| 1.25× |" in table
    quality_gate.plot(result, tmp_path / "q.png")
    assert (tmp_path / "q.png").stat().st_size > 0


def test_overhead_accounting_names_each_process_and_divides_per_request():
    from types import SimpleNamespace

    from benchmarks import overhead

    def process(pid, *parents):
        return SimpleNamespace(pid=pid, parents=lambda: list(parents))

    replica, dashboard = process(10), process(15)
    titles = {10: "ray::ServeReplica:graphserve:fast", 11: "VLLM::EngineCore",
              12: "ray::ProxyActor", 13: "/x/raylet --raylet_socket_name=/tmp/ray/s",
              14: "/usr/bin/python some_unrelated_script.py",
              15: "/v/bin/python /v/ray/dashboard/dashboard.py --port=8265",
              16: "/v/bin/python -B -c from multiprocessing.forkserver import main",
              17: "ray::ServeReplica:graphserve:careful.initialize_and_get_metadata",
              18: "ray::IDLE", 19: "ray::HAProxyManager"}
    assert overhead.role(replica, titles) == "replica fast"
    assert overhead.role(process(11, replica), titles) == "engine (fast)"
    assert overhead.role(process(12), titles) == "Serve proxy"
    assert overhead.role(process(13), titles) == "Ray daemons and driver"
    assert overhead.role(process(14), titles) is None
    assert overhead.role(process(16, dashboard), titles) == "Ray dashboard"
    assert overhead.role(process(17), titles) == "replica careful"  # while a call runs in it
    assert overhead.role(process(18), titles) == "Ray workers (idle, apps' build)"
    assert overhead.role(process(19), titles) == "HAProxy"

    before = {10: ("replica fast", 1.0), 11: ("engine (fast)", 5.0)}
    after = {10: ("replica fast", 1.5), 11: ("engine (fast)", 9.0), 99: ("Serve proxy", 3.0)}
    table = overhead.cpu_ms_per_request(before, after, requests=10)
    # A process seen only at one end is left out: its CPU before the run is not the run's.
    assert table == {"engine (fast)": 400.0, "replica fast": 50.0, "total": 450.0}


def test_the_embeddings_peer_figure_draws_every_server_and_client(tmp_path):
    from benchmarks import embeddings_peer

    def scenarios(rate):
        return {name: {"sentences_per_s": rate * (i + 1), "p50_ms": 10.0 * (i + 1)}
                for i, (name, *_) in enumerate(embeddings_peer.SCENARIOS)}

    results = {"servers": {"infinity": scenarios(50), "graph": scenarios(60)},
               "servers_wrk": {"infinity": scenarios(55), "graph": scenarios(70)},
               "in_process": {"onnx, 1 per call": 280.0, "onnx, 32 per call": 630.0}}
    embeddings_peer.plot(results, tmp_path / "peer.png")
    assert (tmp_path / "peer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_start_cpu_counts_the_processes_started_after_it_and_no_others():
    import subprocess
    import sys

    from benchmarks import overhead

    earlier = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    meter = overhead.StartCpu(interval_s=0.1)
    burn = ("import time\nwhile time.process_time() < 0.6: pass\nprint('done', flush=True)\n"
            "time.sleep(30)")
    busy = subprocess.Popen([sys.executable, "-c", burn], stdout=subprocess.PIPE, text=True)
    try:
        assert busy.stdout.readline().strip() == "done"
        table = meter.stop()
    finally:
        for p in (earlier, busy):
            p.kill()
            p.wait()
    assert 0.6 <= table["other processes"] < 5  # the busy child's 0.6 s, nothing of `earlier`'s
    assert table["total"] >= table["other processes"]
    assert earlier.pid not in meter.seen and busy.pid in meter.seen


def test_overhead_ratios_compare_each_data_path_with_the_peers_of_the_same_run():
    from benchmarks import overhead

    def server(tok_s, ttft, cold, gate_on=None, embed=None):
        out = {"cold_start_s": cold, "ttft_c1": {"ttft_p50_ms": ttft},
               "chat_c16": {"throughput_tok_s": tok_s}}
        if gate_on is not None:
            out["chat_c16_gate_on"] = {"throughput_tok_s": gate_on}
            out["embed_c32"] = {"sentences_per_s": embed}
        return out

    results = {"vllm_serve": server(200.0, 50.0, 30.0), "encode_in_process": {"sentences_per_s": 800},
               "graph": {"default": server(100.0, 120.0, 60.0, 50.0, 80.0),
                         "broken": {"error": "RuntimeError: no"}}}
    ratios = overhead.ratios(results)
    assert set(ratios) == {"default"}  # a data path that failed has no ratios
    assert ratios["default"] == {"chat_c16_ratio": 0.5, "chat_c16_gate_on_ratio": 0.25,
                                 "ttft_c1_delta_ms": 70.0, "embed_c32_ratio": 0.1,
                                 "cold_start_ratio": 2.0}


def test_off_topic_pairs_show_each_right_answer_under_another_question():
    from benchmarks import offtopic

    rows = [{"id": f"{k}-{i}", "kind": k, "prompt": f"q {k} {i}", "answer": f"a {k} {i}",
             "right": i != 1} for k in ("x", "y", "z") for i in range(3)]
    shown = offtopic.pairs(rows)
    right = [r for r in rows if r["right"]]
    assert [r["id"] for _, r in shown["on-topic"]] == [r["id"] for r in right]
    assert all(q == r["prompt"] for q, r in shown["on-topic"])
    for pairing, same in (("another kind", False), ("same kind", True)):
        assert len(shown[pairing]) == len(right)
        for question, r in shown[pairing]:
            asked = next(s for s in rows if s["prompt"] == question)
            assert asked["id"] != r["id"] and (asked["kind"] == r["kind"]) == same


def test_time_to_serve_reads_each_replicas_start_back_from_its_health_and_tables_it():
    import datetime
    import time

    from benchmarks import recovery

    phases = {"process": 3.0, "waiting": 0.0, "vllm_import": 9.0, "engine": 4.0, "warmup": 2.0}
    body = {"deployments": {tier: {"start_phases_s": phases, "uptime_seconds": 10.0}
                            for tier in recovery.TIERS}}
    # Launched 35 s ago, up for 10 s after 18 s of start: its process began 7 s after launch.
    starts = recovery.replica_starts(body, since_wall=time.time() - 35)
    assert starts["fast"]["before_process"] == 7.0 and starts["fast"]["ready"] == 25.0
    peer = {"variant": "vllm serve", "cold_first_answer_s": 20.0, "cold_healthy_s": 19.5,
            "cold_cpu_s": {"engine": 11.8, "vLLM API server": 9.7, "other processes": 0.0,
                           "total": 21.5}}
    # Serve's steps from its controller's log: a step's first line (the last for the builds), the
    # LLM tiers' replicas only, lines of other processes and without a timestamp skipped.
    launched = datetime.datetime(2026, 12, 6, 2, 0, 0).timestamp()
    log = "\n".join([
        "INFO 2026-12-06 02:00:04,800 controller 11 -- Controller starting (version='2.60.0').",
        "INFO 2026-12-06 02:00:06,400 controller 11 -- Deploying new app 'graphserve'.",
        "INFO 2026-12-06 02:00:06,450 controller 11 -- Deploying new app 'embeddings'.",
        "INFO 2026-12-06 02:00:08,300 controller 11 -- Imported and built app 'embeddings' ok.",
        "INFO 2026-12-06 02:00:08,400 controller 11 -- Imported and built app 'graphserve' ok.",
        "INFO 2026-12-06 02:00:08,390 controller 11 -- Starting Replica(id='a', "
        "deployment='embedder', app='embeddings').",
        "INFO 2026-12-06 02:00:08,600 controller 11 -- Starting Replica(id='b', "
        "deployment='fast', app='graphserve').",
        "INFO 2026-12-06 02:00:01,000 proxy 1.2.3.4 -- Deploying new app 'elsewhere'.",
        "  Deploying new app 'a continuation line'",
    ])
    steps = recovery.serve_steps(log, launched)
    assert steps == {"controller": 4.8, "proxies ready": 6.4, "apps built": 8.4,
                     "LLM replicas asked for": 8.6}
    graph = {"variant": "fork", "cold_first_answer_s": 26.0, "cold_healthy_s": 27.0,
             "cold_cpu_s": {"replica fast": 10.0, "engine (fast)": 3.0, "total": 13.0},
             "cold_serve_steps": steps, "cold_replicas": starts, "recovery_replicas": starts, "recovery_answering_s": 24.0,
             "recovery_healthy_s": 25.0, "load_statuses": {"200": 70, "500": 2}}
    slower = {**graph, "cold_first_answer_s": None,
              "cold_cpu_s": {"replica fast": 12.0, "engine (fast)": 5.0, "total": 17.0}}
    table = recovery.markdown([peer, graph, slower])
    # CPU by process, the median of each server's runs; a process a server lacks is a dash.
    assert "| process | vllm serve | fork |" in table
    assert "| engine (fast) | – | 4.0 |" in table and "| engine | 11.8 | – |" in table
    assert table.index("| replica fast |") < table.index("| total | 21.5 | 15.0 |")
    assert "| other processes |" not in table  # seen, but spent nothing
    assert ("| graph, `engine_core_start: fork, tier_load_order: side_by_side` | 26.0, – (**26.0**) "
            "| 27.0, 27.0 (**27.0**) | 1.3 |") in table
    assert "| fork | 7.0 | 3.0 | 9.0 | 0.0 | 4.0 | 2.0 | 25.0 |" in table
    assert "| fork | 4.8 | 6.4 | 8.4 | 8.6 | 7.0 | 25.0 | 26.0 |" in table
    assert "| fork | 24.0, 24.0 (**24.0**) | 25.0, 25.0 (**25.0**) | 140 × 200, 4 × 500 |" in table


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (.ci/run installs it)")
def test_wrk_counts_every_response_and_only_answers_with_embeddings_as_served():
    """A server that answers every 4th request 503 and every 5th a 200 without embeddings: both
    are failures, the rest are counted sentences."""
    seen = {"n": 0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            texts = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["input"]
            seen["n"] += 1
            status = 503 if seen["n"] % 4 == 0 else 200
            body = {"data": [{"embedding": [0.5]} for _ in texts]} if seen["n"] % 5 else {"data": []}
            raw = json.dumps(body if status == 200 else {"error": {}}).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        r = load.wrk_embed_level(f"http://127.0.0.1:{server.server_port}/v1/embeddings", "m",
                                 concurrency=2, per_request=3, seconds=1)
    finally:
        server.shutdown()
    statuses = r["statuses"]
    assert statuses["503"] > 0 and statuses["200 without embeddings"] > 0 and statuses["200"] > 0
    assert r["failed"] == statuses["503"] + statuses["200 without embeddings"]
    assert r["requests"] == sum(statuses.values())
    assert r["sentences_per_s"] > 0 and r["p50_ms"] <= r["p95_ms"]

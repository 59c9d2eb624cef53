"""Every metric graphserve defines, in one place, exported through Ray's Prometheus endpoint.

Recorded with `ray.serve.metrics`, which tags each sample with its application, deployment and
replica, so Prometheus sums them across replicas and nodes. Ray's exporter prefixes every name with
`ray_` (a counter `graphserve_requests` is scraped as `ray_graphserve_requests_total`).

The engine's own numbers (time to first token, time per output token, end-to-end latency, prompt
and generation tokens, requests running and waiting) are vLLM's: its `RayPrometheusStatLogger`
records them under `ray_vllm_*`, labelled by model, and they are not recomputed here.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160]
SCORE_BUCKETS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0]
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256]
LOAD_BUCKETS = [1, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600]
# Around the stall thresholds (router.stall_reroute_s, tiers[].stall_timeout_s): how close a busy
# engine's silences come to them.
SILENCE_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2, 3, 4, 5, 7.5, 10, 15, 20, 30, 60]


@dataclass(frozen=True)
class Spec:
    name: str
    kind: str  # counter | histogram
    description: str
    tags: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None

    @property
    def exported(self) -> str:
        """The name Prometheus sees (histograms add _bucket/_sum/_count to it)."""
        return f"ray_{self.name}" + ("_total" if self.kind == "counter" else "")


SPECS = {s.name: s for s in [
    Spec("graphserve_requests", "counter", "HTTP requests answered, by route and status code",
         ("route", "status")),
    Spec("graphserve_request_latency_seconds", "histogram",
         "HTTP request latency to the last byte (streams included), by route", ("route",),
         tuple(LATENCY_BUCKETS)),
    Spec("graphserve_quality_score", "histogram", "quality score of each scored answer, by tier",
         ("tier",), tuple(SCORE_BUCKETS)),
    Spec("graphserve_quality_gate_failures", "counter",
         "answers that scored below the threshold, by tier", ("tier",)),
    Spec("graphserve_quality_retries", "counter", "gate retries within a tier", ("tier",)),
    Spec("graphserve_quality_escalations", "counter",
         "gate escalations, by the tier escalated to", ("tier",)),
    Spec("graphserve_quality_degraded", "counter",
         "scores computed without a component (e.g. relevance while the embedder is down)",
         ("component",)),
    Spec("graphserve_scoring_latency_seconds", "histogram",
         "time to score one answer (embedder call included)", (), tuple(LATENCY_BUCKETS)),
    Spec("graphserve_tier_unavailable", "counter",
         "attempts a tier could not take (down, restarting, dead engine)", ("tier",)),
    Spec("graphserve_embedder_batch_size", "histogram",
         "strings per encode call after dynamic batching", (), tuple(BATCH_BUCKETS)),
    Spec("graphserve_embedder_batch_latency_seconds", "histogram",
         "time of one batched encode call", (), tuple(LATENCY_BUCKETS)),
    # A histogram, not a gauge: Ray drops a gauge that is not set again within two export periods,
    # and a load happens once per replica; count = loads, sum / count = mean load time.
    Spec("graphserve_model_load_seconds", "histogram",
         "seconds each replica took to load its model (warm-up included)", ("model",),
         tuple(LOAD_BUCKETS)),
    Spec("graphserve_canary_checks", "counter",
         "canary questions answered, by tier and whether the answer was right", ("tier", "correct")),
    Spec("graphserve_canary_score", "histogram", "quality score of each canary answer, by tier",
         ("tier",), tuple(SCORE_BUCKETS)),
    Spec("graphserve_health_check_failures", "counter",
         "failed replica health checks (dead or stalled engine)", ("reason",)),
    Spec("graphserve_engine_silence_seconds", "histogram",
         "how long the engine core took to answer each heartbeat question (answered between two "
         "steps): a busy engine's silences, against which a stall is told apart", ("model",),
         tuple(SILENCE_BUCKETS)),
]}


@functools.cache
def metric(name: str):
    """The Ray metric for a spec, created once per process (inside the replica that records it)."""
    from ray.serve import metrics

    spec = SPECS[name]
    if spec.kind == "counter":
        return metrics.Counter(spec.name, description=spec.description, tag_keys=spec.tags)
    return metrics.Histogram(spec.name, description=spec.description,
                             boundaries=list(spec.buckets), tag_keys=spec.tags)


def inc(name: str, value: float = 1.0, **tags: str) -> None:
    metric(name).inc(value, tags=tags or None)


def observe(name: str, value: float, **tags: str) -> None:
    metric(name).observe(value, tags=tags or None)



class RequestMetrics:
    """ASGI middleware: one count and one latency per HTTP request, by route and status.

    Pure ASGI (not BaseHTTPMiddleware) so streaming responses and client disconnects pass through
    untouched; the latency runs to the last body byte, so a stream is measured to its [DONE].
    """

    def __init__(self, app, routes: frozenset[str], mount: str = ""):
        """`routes`: the paths to label by name, as a client of the graph writes them; `mount`:
        where this application sits below the graph's prefix (the embedder: /v1/embeddings)."""
        self.app = app
        self.routes = routes
        self.mount = mount

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.monotonic(), 500

        async def record_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            relative = scope["path"].removeprefix(scope.get("root_path", ""))
            path = (self.mount + relative).rstrip("/") or "/"
            route = path if path in self.routes else "other"  # unknown paths: bounded labels
            inc("graphserve_requests", route=route, status=str(status))
            observe("graphserve_request_latency_seconds", time.monotonic() - started, route=route)

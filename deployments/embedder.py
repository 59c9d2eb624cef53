"""Embedder deployment: sentence-transformers behind Ray Serve's dynamic batching.

It is the ingress of its own application at `/v1/embeddings` (serve_config.yaml), so a client's
request reaches the model in one hop, with the router's auth, limits and errors (`http.py`).
Concurrent requests are merged by `@serve.batch` into one `encode` call (one forward pass over all
their strings), which is where the throughput comes from. `encode` runs in a worker thread so the
replica's event loop keeps answering health checks while a large batch is encoded. The router's
scoring calls (`embed_for_scoring`, through a handle) have a batch queue of their own, so a gated
answer never waits behind the clients' embedding traffic: its batch runs beside theirs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

import numpy as np
from fastapi import Request
from fastapi.responses import Response
from ray import serve

from deployments import api, metrics
from deployments.config import EmbedderConfig, RouterConfig, assigned
from deployments.encoder import SentenceEncoder
from deployments.http import api_app, as_json, authorize, bounded, read_json
from deployments.models import embedder_folder
from deployments.protocol import BadRequest, EmbeddingRequest, ModelNotFound

log = logging.getLogger("ray.serve")


Embedded = tuple[np.ndarray, np.ndarray]  # vectors (one row per text), token count per text


def split_rows(requests: list[list[str]], vectors: np.ndarray, tokens: np.ndarray) -> list[Embedded]:
    """The rows of one merged encode, handed back to the requests they came from, in order."""
    out, start = [], 0
    for texts in requests:
        end = start + len(texts)
        out.append((vectors[start:end], tokens[start:end]))
        start = end
    return out


def check_inputs(texts: list[str], config: EmbedderConfig) -> None:
    """The limits of one embeddings request, checked before it is merged into a batch."""
    if not texts:
        raise BadRequest("input must not be empty", param="input")
    if len(texts) > config.max_inputs:
        raise BadRequest(f"at most {config.max_inputs} inputs per request", param="input")
    longest = max(len(t) for t in texts)
    if longest > config.max_input_chars:
        raise BadRequest(
            f"each input is limited to {config.max_input_chars} characters, got {longest}",
            param="input",
        )


ROUTE = "/v1/embeddings"
app = api_app("graphserve embeddings", frozenset({ROUTE}), mount=ROUTE)


@serve.deployment
@serve.ingress(app)
class EmbedderDeployment:
    def __init__(self, config: EmbedderConfig, edge: RouterConfig):
        """`edge`: the router's HTTP settings (API key, body limit, timeout), the same here."""
        self.config = config
        self.edge = edge
        self.api_key = edge.api_key(os.environ)
        started = time.monotonic()
        folder = embedder_folder(config.model_source)
        # What Ray gave this replica (a serve config's `deployments:` entry may override the
        # args); Ray pins OMP_NUM_THREADS to its CPUs, an explicit `threads` overrides that.
        self.resources = assigned(config.deployment)
        self.encoder = SentenceEncoder(folder, config.device, config.dtype,
                                       threads=config.threads or max(1, int(self.resources["CPU"])),
                                       backend=config.backend,
                                       max_batch_tokens=config.max_batch_tokens)
        self.dimensions = self.encoder.dimensions
        self.load_seconds = time.monotonic() - started
        self.started_at = time.time()
        for queue in (self._encode_batch, self._scoring_batch):
            queue.set_max_batch_size(config.max_batch_size)
            queue.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        metrics.observe("graphserve_model_load_seconds", self.load_seconds, model=config.model_id)
        log.info("embedder %s loaded from %s on %s in %s (%s) in %.1f s (%d dims)", config.model_id,
                 folder, self.encoder.device, self.encoder.dtype, self.encoder.backend,
                 self.load_seconds, self.dimensions)

    @app.post("/")  # the application's route prefix: /v1/embeddings
    async def embeddings(self, request: Request) -> Response:
        # A full replica never gets here: Serve refuses the request with a 429 and Retry-After,
        # given the OpenAI body by the middleware Serve runs in front of it (proxy_errors.py).
        authorize(request, self.api_key)
        body = await read_json(request, EmbeddingRequest, self.edge.max_body_bytes)
        if body.model != self.config.model_id:
            raise ModelNotFound.named(body.model, [self.config.model_id], "embedding model")
        vectors, tokens = await bounded(self.embed(body.texts()), self.edge.request_timeout_s,
                                        request)
        if body.dimensions is not None and body.dimensions != vectors.shape[1]:
            raise BadRequest(f"this model returns {vectors.shape[1]} dimensions; "
                             "other sizes are not supported", param="dimensions")
        return as_json(api.embedding_list(body.model, vectors, tokens, body.encoding_format))

    async def embed(self, texts: list[str]) -> Embedded:
        """L2-normalised float32 vectors, one row per text, and each text's token count."""
        check_inputs(texts, self.config)
        return await self._encode_batch(texts)

    async def embed_for_scoring(self, texts: list[str]) -> Embedded:
        """`embed` for the router's quality gate, in its own batch queue (its texts are bounded by
        the router: a prompt, an answer and its samples)."""
        return await self._scoring_batch(texts)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def _encode_batch(self, requests: list[list[str]]) -> list[Embedded]:
        return await self._encode_requests(requests)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def _scoring_batch(self, requests: list[list[str]]) -> list[Embedded]:
        return await self._encode_requests(requests)

    async def _encode_requests(self, requests: list[list[str]]) -> list[Embedded]:
        flat = [t for texts in requests for t in texts]
        started = time.monotonic()
        vectors, tokens = await asyncio.to_thread(self.encoder.encode, flat)
        metrics.observe("graphserve_embedder_batch_latency_seconds", time.monotonic() - started)
        metrics.observe("graphserve_embedder_batch_size", len(flat))
        return split_rows(requests, vectors, tokens)

    def info(self) -> dict:
        return {
            "model": self.config.model_id,
            "dimensions": self.dimensions,
            "device": self.encoder.device,
            "dtype": self.encoder.dtype,
            "backend": self.encoder.backend,
            "resources": self.resources,
            "load_seconds": round(self.load_seconds, 2),
            "uptime_seconds": round(time.time() - self.started_at, 1),
        }

    async def check_health(self) -> None:
        # Nothing can wedge sentence-transformers short of the process dying, which Serve sees.
        return None

"""The embedder's model: sentence-transformers on a chosen device, dtype and backend, no Ray import.

The embedder deployment runs this; it lives apart from the deployment so that its CUDA path can be
tested where Ray and vLLM cannot be installed (`make test-gpu`, tests/gpu/). On a GPU, `dtype`
"auto" is float16, as TEI serves by default: tests/gpu measured its vectors against float32 ones.

On a CPU in float32 the model's transformer runs on ONNX Runtime ("auto" backend): exported once
from the sentence-transformers model (`onnx_file`, cached like the LLM's safetensors), its output
goes through the model's own pooling and normalisation modules. One thread, MiniLM: 2.5x torch's
sentences/s one sentence at a time and 1.3x at 32 (`python -m benchmarks.embeddings_peer`, its
in-process table; RESULTS.md), vectors within cosine 0.999 of torch's (tests/test_encoder.py).
sentence-transformers' own `backend="onnx"` needs optimum, which pins transformers < 4.58 (vLLM
needs 5.x): not usable here.
Inputs are sorted by length and cut into batches by a padded-token budget (as TEI batches).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from deployments.heap import release_freed_memory

log = logging.getLogger("graphserve.encoder")
ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def pick_device(device: str) -> str:
    """'auto': the GPU when this process has one, else the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pick_dtype(dtype: str, device: str) -> str:
    """'auto': float16 on a GPU (half the memory; vectors within cosine 0.999999 of float32 in
    tests/gpu), float32 on a CPU (the dtype every CPU figure of the embedder here was measured in)."""
    if dtype == "auto":
        return "float16" if device.startswith("cuda") else "float32"
    return dtype


def pick_backend(backend: str, device: str, dtype: str) -> str:
    """'auto': ONNX Runtime on a CPU in float32 (the faster there), torch anywhere else (the
    serving image has ONNX Runtime's CPU build only, and half precision is torch's)."""
    if backend == "auto":
        return "onnx" if device == "cpu" and dtype == "float32" else "torch"
    if backend == "onnx" and (device != "cpu" or dtype != "float32"):
        raise ValueError(f"the onnx backend runs on the CPU in float32, not {device}/{dtype}")
    return backend


def token_batches(lengths: np.ndarray, max_tokens: int, max_size: int) -> list[np.ndarray]:
    """Indices of the inputs, longest first, cut into batches whose padded size (count x longest)
    stays within `max_tokens` and whose count within `max_size`; an input longer than the budget
    gets a batch of its own. Sorting keeps the padding small."""
    batches, current, longest = [], [], 0
    for i in np.argsort(-lengths, kind="stable"):
        longest_if = max(longest, int(lengths[i]))
        if current and (len(current) == max_size or longest_if * (len(current) + 1) > max_tokens):
            batches.append(np.array(current))
            current, longest_if = [], int(lengths[i])
        current.append(int(i))
        longest = longest_if
    if current:
        batches.append(np.array(current))
    return batches


def onnx_file(model, folder: Path) -> Path:
    """The model's transformer as ONNX, exported once per folder (its files' sizes and times name
    the cache entry) under the graph's cache; concurrent replicas wait for one export."""
    from deployments.models import cache_dir, file_lock

    stamp = hashlib.sha1(str(folder.resolve()).encode())
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        stamp.update(f"{f.relative_to(folder)}:{f.stat().st_size}:{f.stat().st_mtime_ns}".encode())
    target = cache_dir() / "models" / f"{folder.name}-onnx-{stamp.hexdigest()[:12]}" / "model.onnx"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / "export.lock"):
        if not target.is_file():
            _export(model, target)
    return target


def _export(model, target: Path) -> None:
    import torch

    sample = model.preprocess(["an example sentence", "and another"])
    names = [n for n in ONNX_INPUTS if n in sample]
    transformer = model[0].auto_model

    class LastHidden(torch.nn.Module):  # positional inputs for the exporter, one output
        def __init__(self):
            super().__init__()
            self.model = transformer

        def forward(self, *inputs):
            return self.model(**dict(zip(names, inputs))).last_hidden_state

    log.info("exporting %s to ONNX in %s (once)", type(transformer).__name__, target.parent)
    tmp = target.with_suffix(".tmp")
    dims = {0: "batch", 1: "tokens"}
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(LastHidden().eval(), tuple(sample[n] for n in names), str(tmp),
                          input_names=names, output_names=["token_embeddings"],
                          dynamic_axes={n: dims for n in [*names, "token_embeddings"]},
                          opset_version=17, dynamo=False)
    tmp.rename(target)


class SentenceEncoder:
    """L2-normalised float32 vectors and token counts for a list of strings."""

    def __init__(self, folder: Path, device: str = "auto", dtype: str = "auto",
                 threads: int | None = None, backend: str = "auto", max_batch_tokens: int = 8192):
        import torch
        from sentence_transformers import SentenceTransformer

        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.backend = pick_backend(backend, self.device, self.dtype)
        self.max_batch_tokens = max_batch_tokens
        self.model = SentenceTransformer(str(folder), device=self.device, local_files_only=True)
        self.model.to(getattr(torch, self.dtype))
        self.onnx_file = self.session = None
        if self.backend == "onnx":
            try:
                self._start_onnx(folder, threads)
            except Exception as e:  # a model the export does not know (not a Transformer first)
                if backend != "auto":
                    raise
                log.warning("no ONNX model for %s (%s: %s); torch instead", folder,
                            type(e).__name__, e)
                self.backend, self.onnx_file, self.session = "torch", None, None
        # torch's threads: the model's on torch; on ONNX Runtime torch only pools and normalises,
        # tiny operations whose OpenMP threads would spin at each barrier for nothing.
        if threads or self.backend == "onnx":
            torch.set_num_threads(threads if self.backend == "torch" else 1)
        self.dimensions = int(self.encode(["warm-up"])[0].shape[1])

    def _start_onnx(self, folder: Path, threads: int | None) -> None:
        import onnxruntime

        self.onnx_file = onnx_file(self.model, folder)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's own choice
        options.inter_op_num_threads = 1
        # Idle threads wait instead of spinning: on cores shared with the proxy and the router a
        # spinning thread burns the time its partner needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(self.onnx_file), options,
                                                    providers=["CPUExecutionProvider"])
        self.onnx_inputs = [i.name for i in self.session.get_inputs()]

    def encode(self, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """One row per text (float32 whatever the model's dtype) and each text's token count;
        forward passes of at most `batch_size` texts and `max_batch_tokens` padded tokens."""
        ids = self.model.tokenizer(texts, truncation=True,
                                   max_length=self.model.max_seq_length)["input_ids"]
        tokens = np.array([len(x) for x in ids])
        batches = token_batches(tokens, self.max_batch_tokens, batch_size)
        encoded = np.concatenate([self._forward([texts[i] for i in batch]) for batch in batches])
        vectors = np.empty_like(encoded)
        vectors[np.concatenate(batches)] = encoded
        release_freed_memory()
        return vectors, tokens

    def _forward(self, texts: list[str]) -> np.ndarray:
        """One batch through the model. Normalised after the cast to float32: in bfloat16 a vector
        normalised in the model's dtype is off unit length by up to 4e-3 (tests/gpu), enough to
        skew a client's dot products."""
        import torch

        if self.session is None:
            vectors = self.model.encode(texts, batch_size=len(texts), convert_to_tensor=True)
        else:
            features = self.model.preprocess(texts)
            hidden = self.session.run(None, {n: features[n].numpy() for n in self.onnx_inputs})[0]
            features["token_embeddings"] = torch.from_numpy(hidden)
            with torch.inference_mode():
                for module in list(self.model)[1:]:  # the model's pooling (and dense) modules
                    features = module(features)
            vectors = features["sentence_embedding"]
        return torch.nn.functional.normalize(vectors.float(), dim=-1).cpu().numpy()

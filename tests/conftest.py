"""Fixtures shared by the unit tests."""

import pytest

from deployments import metrics


@pytest.fixture
def counted(monkeypatch):
    """The metrics a test recorded, as (name, tags), instead of Ray's exporter."""
    seen = []
    monkeypatch.setattr(metrics, "inc", lambda name, value=1.0, **tags: seen.append((name, tags)))
    monkeypatch.setattr(metrics, "observe", lambda name, value, **tags: seen.append((name, tags)))
    return seen

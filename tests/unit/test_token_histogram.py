"""server.observe.metrics.TokenHistogram renders what prometheus_client's own Histogram renders for the same values."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from server.observe.metrics import TokenHistogram

BUCKETS = (0.001, 0.01, 0.1, 1, 10)


def _series(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if line and not line.startswith("#") and "_created" not in line]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.sampled_from([0.0, *BUCKETS]), st.floats(0, 100, allow_nan=False)), max_size=50))
def test_same_exposition_as_prometheus_client(values):
    ours, reference = CollectorRegistry(), CollectorRegistry()
    hist = TokenHistogram("t_seconds", "doc", BUCKETS)
    ours.register(hist)
    ref = Histogram("t_seconds", "doc", buckets=BUCKETS, registry=reference)
    for v in values:
        hist.observe(v)
        ref.observe(v)
    assert _series(ours) == _series(reference)


def test_a_value_on_a_bound_counts_in_that_bucket():
    registry = CollectorRegistry()
    hist = TokenHistogram("t_seconds", "doc", BUCKETS)
    registry.register(hist)
    hist.observe(0.01)
    lines = _series(registry)
    assert 't_seconds_bucket{le="0.001"} 0.0' in lines and 't_seconds_bucket{le="0.01"} 1.0' in lines
    assert "t_seconds_count 1.0" in lines and "t_seconds_sum 0.01" in lines

"""engine/adapter_activity.py: an adapter's requests wait from the moment the engine holds them until the engine
has scheduled as many, and stop counting when they end, however they end."""

from __future__ import annotations

import pytest

from engine.adapter_activity import AdapterActivity


def activity(scheduled: dict[str, int]) -> AdapterActivity:
    return AdapterActivity(4, lambda: dict(scheduled))


def test_requests_wait_until_the_engine_schedules_them():
    scheduled: dict[str, int] = {}
    act = activity(scheduled)
    with act.holding("alpha", 1), act.holding("alpha", 1), act.holding("beta", 2):
        reading = act.reading()
        assert reading.max_loras == 4 and reading.running == () and reading.waiting == ("alpha", "beta")
        scheduled["alpha"] = 1  # one of alpha's two runs, the other still waits
        reading = act.reading()
        assert reading.running == ("alpha",) and reading.waiting == ("alpha", "beta")
        scheduled.update(alpha=2, beta=2)  # beta's two sequences (n=2) both run
        reading = act.reading()
        assert reading.running == ("alpha", "beta") and reading.waiting == ()
    scheduled.clear()
    assert act.reading().running == () == act.reading().waiting


def test_a_request_that_fails_or_is_cancelled_stops_counting():
    act = activity({})
    with pytest.raises(RuntimeError), act.holding("alpha", 1):
        raise RuntimeError("the engine stopped")
    assert act.reading().waiting == ()


def test_idle_adapters_the_engine_reports_are_left_out():
    act = activity({"alpha": 0})
    assert act.reading().running == ()

"""The warm-up before ready (setting `warm_up`, server/app.py `_load`) on the real engine: the shared server's log
says the engine warmed up before the model turned ready. The order itself: tests/app/test_warm_up.py."""

from __future__ import annotations


def test_the_real_engine_warmed_up_before_the_server_turned_ready(server):
    log = server.log_path.read_text(errors="replace")
    warmed, ready = log.find("engine warmed up in"), log.find("model llamaserve-tiny-llama3 ready")
    assert 0 <= warmed < ready, log[:4000]

"""API keys from a mounted file on a real server: a rotation takes effect without a restart.

The test rotates the file the way the kubelet updates a mounted Secret: the new version goes into a fresh directory
and the `..data` symlink is swapped to it in one rename. The key source's rules: tests/unit/test_key_rotation.py."""

from __future__ import annotations

import time

import httpx
import pytest

from server.protection.security import KEY_FILE_CHECK_INTERVAL_S
from tests.conftest import ServerProcess
from tests.unit.test_key_rotation import NEW_KEY, OLD_KEY, ROTATION_MARGIN_S, mount_secret


def status_with(srv: ServerProcess, key: str) -> int:
    return httpx.get(srv.base_url + "/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=30).status_code


@pytest.mark.engine
def test_a_rotated_key_file_takes_effect_without_a_restart(tmp_path):
    key_file = mount_secret(tmp_path, "v1", f"{OLD_KEY}\n")
    srv = ServerProcess(["--api-key-file", str(key_file)], allow_unauthenticated=False).wait_ready()
    try:
        assert status_with(srv, OLD_KEY) == 200
        assert status_with(srv, NEW_KEY) == 401
        mount_secret(tmp_path, "v2", f"# rotated\n{NEW_KEY}\n")
        rotated = time.monotonic()
        deadline = rotated + KEY_FILE_CHECK_INTERVAL_S + ROTATION_MARGIN_S
        while status_with(srv, OLD_KEY) != 401:
            assert time.monotonic() < deadline, "the old key still works after the rotation"
            time.sleep(0.1)
        assert status_with(srv, NEW_KEY) == 200
        assert srv.proc.poll() is None, "the server restarted"
    finally:
        srv.stop()

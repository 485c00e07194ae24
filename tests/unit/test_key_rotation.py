"""API keys from a mounted file (server.security.KeySource): a rotation takes effect without a restart, and a broken
one never opens the server. `mount_secret` writes the file the way the kubelet updates a mounted Secret. On a real
server: tests/server/test_key_rotation.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from server.protection import security
from server.protection.security import KeySource

OLD_KEY = "old-key-0123456789abcdefghijklmnop"
NEW_KEY = "new-key-0123456789abcdefghijklmnop"
# A rotation must show within the check interval; the margin covers a request or two on a loaded 2-core host.
ROTATION_MARGIN_S = 5.0


def mount_secret(root: Path, version: str, keys: str) -> Path:
    """Write `keys` as the Secret's current version; returns the path the pod reads (root/keys)."""
    data = root / f"..{version}"
    data.mkdir()
    (data / "keys").write_text(keys)
    tmp_link = root / "..data_tmp"
    tmp_link.symlink_to(data.name)
    os.replace(tmp_link, root / "..data")
    path = root / "keys"
    if not path.is_symlink():
        path.symlink_to(Path("..data") / "keys")
    return path


def test_a_file_rewritten_in_place_is_read_again(tmp_path):
    path = tmp_path / "keys"
    path.write_text(OLD_KEY)
    source = KeySource(["env-key"], path, check_interval_s=0)
    path.write_text(f"{NEW_KEY}\n{OLD_KEY}x\n")
    ring = source.current()
    assert ring.matches(NEW_KEY) and ring.matches("env-key") and not ring.matches(OLD_KEY)


def test_the_file_is_not_looked_at_more_often_than_the_interval(tmp_path, monkeypatch):
    path = tmp_path / "keys"
    path.write_text(OLD_KEY)
    clock = [100.0]
    monkeypatch.setattr(security.time, "monotonic", lambda: clock[0])
    source = KeySource([], path, check_interval_s=1.0)
    path.write_text(NEW_KEY)
    assert source.current().matches(OLD_KEY), "read again before the interval passed"
    clock[0] += 1.0
    assert source.current().matches(NEW_KEY)


@pytest.mark.parametrize("broken", ["", "# only a comment\n", b"\xff\xfe not utf-8", None],
                         ids=["empty", "comments", "not-utf8", "deleted"])
def test_a_broken_rotation_keeps_the_keys_in_force(tmp_path, broken):
    path = tmp_path / "keys"
    path.write_text(OLD_KEY)
    source = KeySource([], path, check_interval_s=0)
    if broken is None:
        path.unlink()
    elif isinstance(broken, bytes):
        path.write_bytes(broken)
    else:
        path.write_text(broken)
    ring = source.current()
    assert ring and ring.matches(OLD_KEY), "a broken key file must neither open the server nor drop the old key"


def test_without_a_key_file_the_settings_keys_are_the_keys():
    source = KeySource(["env-key"], None, check_interval_s=0)
    assert source.current().matches("env-key") and len(source.current()) == 1
    assert not KeySource([], None).current(), "no key at all: an open server, which the start refuses unless told"


def test_a_secret_value_in_the_api_keys_form_is_read_as_its_keys(tmp_path):
    # A Secret made as `--from-literal=api-keys="$KEY,$KEY_2"` is mounted as one comma-separated line.
    path = tmp_path / "keys"
    path.write_text(f"# primary, then the next one\n{OLD_KEY}, {NEW_KEY}\n")
    ring = KeySource([], path).current()
    assert len(ring) == 2 and ring.matches(OLD_KEY) and ring.matches(NEW_KEY)

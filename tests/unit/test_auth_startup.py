"""Auth fails closed: keys asked for but empty, or no key without --allow-unauthenticated, stop the start;
key files skip comments, blank lines and a BOM; settings errors never echo a secret. No engine starts here."""

from __future__ import annotations

import pytest

from server import cli
from server.app import create_app
from server.protection.security import AuthSettingsError
from server.settings import Settings, key_file_lines

SECRET = "s3cret-value-0123456789abcdef"


@pytest.fixture
def started(clean_env, monkeypatch):
    """cli.main up to the point where it would serve: the settings it would serve with, else SystemExit."""
    seen: list[Settings] = []
    monkeypatch.setattr(cli, "serve", seen.append)

    def run(*argv: str) -> Settings:
        cli.main(["serve", *argv])
        assert len(seen) == 1
        return seen.pop()

    return run


def _refusal(run, *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        run(*argv)
    message = info.value.code
    assert isinstance(message, str) and message.startswith("llamaserve: invalid settings:")  # exit status 1
    return message


@pytest.mark.parametrize("value", ["", " ", " , ,", "\t"])
def test_empty_or_blank_api_keys_refuse_to_start(started, clean_env, value):
    clean_env.setenv("LLAMASERVE_API_KEYS", value)
    message = _refusal(started)
    assert "none is set" in message and "LLAMASERVE_API_KEYS" in message
    # Consent to an open server does not cover an empty secret: that is a slip, not a choice.
    assert "none is set" in _refusal(started, "--allow-unauthenticated")


def test_empty_api_keys_flag_and_yaml_list_refuse_too(started, tmp_path):
    assert "none is set" in _refusal(started, "--api-keys", "")
    config = tmp_path / "s.yaml"
    config.write_text('api_keys: ["", "  "]\n')
    assert "none is set" in _refusal(started, "--config", str(config))


@pytest.mark.parametrize("content", [b"", b"\n\n", b"# primary\n  # rotated out\n\n", b"\xef\xbb\xbf\n", b"\r\n \r\n"])
def test_a_key_file_without_keys_refuses_to_start(started, tmp_path, content):
    key_file = tmp_path / "keys"
    key_file.write_bytes(content)
    message = _refusal(started, "--api-key-file", str(key_file))
    assert "none is set" in message and str(key_file) in message


def test_an_unreadable_key_file_refuses_and_names_only_its_path(started, tmp_path):
    absent = tmp_path / "absent"
    assert "cannot read api_key_file" in _refusal(started, "--api-key-file", str(absent)) and str(absent) in _refusal(
        started, "--api-key-file", str(absent))
    # The key itself, pasted into the file setting by mistake, is not echoed.
    assert SECRET not in _refusal(started, "--api-key-file", SECRET)
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe" + SECRET.encode())
    message = _refusal(started, "--api-key-file", str(binary))
    assert "not UTF-8" in message and SECRET not in message


def test_no_key_needs_an_explicit_choice(started, clean_env):
    message = _refusal(started)
    assert "no API key is configured" in message and "--allow-unauthenticated" in message
    assert started("--allow-unauthenticated").allow_unauthenticated
    clean_env.setenv("LLAMASERVE_ALLOW_UNAUTHENTICATED", "true")
    assert started().allow_unauthenticated


def test_keys_serve_without_the_flag(started, clean_env, tmp_path):
    clean_env.setenv("LLAMASERVE_API_KEYS", "k1")
    assert started().all_api_keys() == ["k1"]


def test_key_files_skip_bom_comments_blank_lines_and_whitespace(tmp_path):
    raw = "\ufeff# keys for prod\r\n  primary-key  \r\n\r\n\t# old: secondary-key\nsecond#key-with-hash\n".encode()
    assert key_file_lines(raw) == ["primary-key", "second#key-with-hash"]
    key_file = tmp_path / "keys"
    key_file.write_bytes(raw)
    assert Settings(api_keys=" k0 , ", api_key_file=key_file).all_api_keys() == ["k0", "primary-key", "second#key-with-hash"]


def test_create_app_refuses_empty_keys_in_process_too(tmp_path):
    (tmp_path / "keys").write_text("# nothing yet\n")
    for settings in (Settings(api_keys=""), Settings(api_key_file=tmp_path / "keys")):
        with pytest.raises(AuthSettingsError, match="none is set"):
            create_app(settings)


def test_settings_errors_never_print_a_secret(started, tmp_path, clean_env):
    config = tmp_path / "s.yaml"
    # A misspelt field (its value is most likely the secret) and a wrongly shaped key list.
    config.write_text(f"api_key: {SECRET}\napi_keys:\n  - {{nested: {SECRET}x}}\nport: notaport\n")
    message = _refusal(started, "--config", str(config))
    assert SECRET not in message
    assert "api_key:" in message and "api_keys.0" in message and "port" in message
    assert "notaport" in message  # inputs of fields that are not secrets still help


def test_settings_errors_never_echo_keys_held_by_the_lora_and_guard_settings(started, tmp_path, clean_env):
    config = tmp_path / "s.yaml"
    # lora_access and guard_key_categories take keys (or key ids) as their mapping keys; a mistyped value must
    # not print the key with the error's location. guard_url may hold a password.
    config.write_text(f"lora_access:\n  {SECRET}: 5\nguard_key_categories:\n  {SECRET}k: 7\n"
                      f"admin_api_keys:\n  - {{nested: {SECRET}a}}\nguard_url:\n  - https://u:{SECRET}@guard\n")
    message = _refusal(started, "--config", str(config))
    assert SECRET not in message
    for field in ("lora_access", "guard_key_categories", "admin_api_keys", "guard_url"):
        assert field in message

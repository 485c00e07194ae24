"""Builds a deterministic artefact (a tiny model, guard or adapter) into the cache once, atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def build_once(target: Path, marker: str, build: Callable[[Path], None]) -> Path:
    """`target`, built by `build(staging_dir)` first unless `target/marker` exists. Processes building at once each
    build in a staging directory and the first rename wins: every build is the same, so theirs is as good as ours."""
    if (target / marker).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        build(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / marker).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target

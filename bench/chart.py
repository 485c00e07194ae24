"""The benchmark's chart: llamaserve / vLLM ratios per scenario and metric (matplotlib, the `bench` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench.stats import RATIO_COLUMNS  # noqa: E402


def save_chart(report: dict[str, Any], path: Path) -> Path:
    rows = report["ratios"]
    metrics = [(m, h) for m, h, _ in RATIO_COLUMNS]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.0 * len(metrics), 0.32 * len(rows) + 2), sharey=True)
    labels = [r["scenario"] for r in rows]
    y = range(len(rows))
    for ax, (metric, heading), (_, _, higher) in zip(axes, metrics, RATIO_COLUMNS):
        values = [r[metric] if r[metric] is not None else 0 for r in rows]
        colors = ["#2a9d8f" if (v >= 1 if higher else v <= 1) else "#e76f51" for v in values]
        ax.barh(list(y), values, color=colors)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_title(f"{heading}\n({'higher' if higher else 'lower'} is better)", fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    axes[0].set_yticks(list(y))
    axes[0].set_yticklabels(labels, fontsize=8)
    axes[0].invert_yaxis()
    meta = report["meta"]
    fig.suptitle(f"llamaserve / vLLM server, same engine ({meta['when']}, git {meta['git']})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

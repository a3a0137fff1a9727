"""Serving figures: request latencies per kind of request."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from translator.plots.figures import _figure, _save

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_latency(
    samples: Mapping[str, Sequence[float]], path: str | Path | None = None
) -> tuple[Figure, dict[str, dict[str, float]]]:
    """Request latencies in milliseconds, one row of dots (and its median) per request kind.

    Args:
        samples: name -> latencies in seconds, e.g. {"greedy, 1 sentence": [...], ...}.
        path: PNG to write (7 inches wide, 1.5 + 0.5 per request kind high).

    Returns:
        The figure and, per name, `n`, `median_ms`, `p90_ms` and `max_ms`.
    """
    if not samples or any(len(v) == 0 for v in samples.values()):
        raise ValueError("need at least one latency per request kind")
    millis = {name: 1000.0 * np.asarray(v, np.float64) for name, v in samples.items()}
    data = {
        name: {
            "n": int(len(ms)),
            "median_ms": float(np.median(ms)),
            "p90_ms": float(np.percentile(ms, 90)),
            "max_ms": float(ms.max()),
        }
        for name, ms in millis.items()
    }
    fig = _figure(7, 1.5 + 0.5 * len(millis))
    ax = fig.subplots()
    jitter = np.random.default_rng(0)
    for row, ms in enumerate(millis.values()):
        ax.plot(ms, row + jitter.uniform(-0.15, 0.15, len(ms)), ".", alpha=0.5)
        ax.plot([np.median(ms)] * 2, [row - 0.3, row + 0.3], "k-", linewidth=2)
    ax.set_yticks(range(len(millis)), list(millis))
    ax.set(xlabel="latency (ms); bar: median", title="Request latency")
    ax.invert_yaxis()
    ax.grid(alpha=0.3, axis="x")
    _save(fig, path)
    return fig, data

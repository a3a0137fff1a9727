"""What every figure shares: the Agg figure, PNG writing, axis helpers, the error type.

Figures are `matplotlib.figure.Figure` objects on the Agg canvas: no pyplot state and no GUI
backend, so they work in servers, threads and tests. matplotlib is the `plots` extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from translator.errors import TranslatorError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100


class PlotError(TranslatorError):
    """A plot cannot be made from what was given (no history, no attention, no matplotlib)."""


def _figure(width: float, height: float) -> Figure:
    """A Figure of `width` x `height` inches on the Agg canvas (pyplot is never touched)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
        from matplotlib.figure import Figure  # noqa: PLC0415
    except ImportError:
        raise PlotError("plots need matplotlib: pip install 'translator[plots]'") from None
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path | None) -> None:
    """Writes `fig` as a PNG of exactly figsize * DPI pixels (no tight bounding box)."""
    if path is None:
        return
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, format="png")
    except OSError as exc:
        raise PlotError(f"cannot write plot {path}: {exc.strerror or exc}") from None


def _width(positions: int) -> float:
    """Figure width in inches for `positions` labelled columns: 3 + 0.3 each, within [6, 16]."""
    return min(max(6.0, 3 + 0.3 * positions), 16.0)


def _integer_ticks(ax) -> None:
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))

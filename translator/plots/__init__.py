"""Figures: training curves, LSTM gates, gradient flow, context vectors, attention, latency.

Every `plot_*` function draws data and returns `(figure, data)`, `data` being exactly the
numbers drawn, and writes a PNG when given a path. The numbers about the model's inside come
from `translator.introspect`; the training curves from a model directory's history.json.

Figures are `matplotlib.figure.Figure` objects on the Agg canvas: no pyplot state and no GUI
backend, so they work in servers, threads and tests. In a notebook, `IPython.display.display(fig)`
or `IPython.display.Image(path)` shows one. matplotlib is the `plots` extra.

Modules: `figures` (shared helpers), `history` (training curves), `inside` (the model's
inside), `latency` (serving).
"""

from translator.plots.figures import DPI, PlotError
from translator.plots.history import load_history, plot_loss, plot_scores, write_history_plots
from translator.plots.inside import (
    plot_attention,
    plot_context_vectors,
    plot_gates,
    plot_gradient_flow,
    write_attention_plot,
)
from translator.plots.latency import plot_latency

__all__ = [
    "DPI",
    "PlotError",
    "load_history",
    "plot_attention",
    "plot_context_vectors",
    "plot_gates",
    "plot_gradient_flow",
    "plot_latency",
    "plot_loss",
    "plot_scores",
    "write_attention_plot",
    "write_history_plots",
]

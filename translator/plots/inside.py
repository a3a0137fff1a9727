"""Figures of the model's inside, from `translator.introspect`: LSTM gates and cell states,
gradient flow through the encoder, context vectors in 2-D, attention heatmaps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from translator.introspect import AttentionMap, LSTMTrace, attention_map, pca_2d
from translator.plots.figures import _figure, _save, _width

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from translator.translating import BaseTranslator


def _pick_units(trace: LSTMTrace, units: int | Sequence[int]) -> np.ndarray:
    """Unit indices: the given ones, or the `units` whose cell state varies most over time."""
    if isinstance(units, int):
        order = np.argsort(-trace.cell.std(axis=0), kind="stable")
        return np.sort(order[: min(units, trace.cell.shape[1])])
    return np.asarray(units, np.int64)


def plot_gates(
    trace: LSTMTrace,
    tokens: Sequence[str],
    units: int | Sequence[int] = 16,
    path: str | Path | None = None,
    title: str = "",
) -> tuple[Figure, dict[str, np.ndarray]]:
    """Heatmaps (units x source position) of the input, forget and output gates and the cell.

    Args:
        trace: an `LSTMTrace` (e.g. `encoder_traces(...)[0]["forward"]`).
        tokens: the source pieces, one per position (x-axis labels).
        units: how many units to show (those whose cell state varies most), or their indices.
        path: PNG to write (3 + 0.3 inches per token wide, within 6 to 16; 9 high).
        title: figure title.

    Returns:
        The figure and the drawn data: `units` `[n]` and `input_gate`, `forget_gate`,
        `output_gate`, `cell`, each `[time, n]` (the trace's columns for those units).
    """
    if len(tokens) != trace.cell.shape[0]:
        raise ValueError(f"{len(tokens)} tokens for a trace of {trace.cell.shape[0]} steps")
    picked = _pick_units(trace, units)
    data = {
        "units": picked,
        "input_gate": trace.input_gate[:, picked],
        "forget_gate": trace.forget_gate[:, picked],
        "output_gate": trace.output_gate[:, picked],
        "cell": trace.cell[:, picked],
    }
    fig = _figure(_width(len(tokens)), 9)
    axes = fig.subplots(4, 1, sharex=True)
    bound = max(float(np.abs(data["cell"]).max()), 1e-6)
    panels = (
        ("input_gate", "input gate i", "viridis", 0.0, 1.0),
        ("forget_gate", "forget gate f", "viridis", 0.0, 1.0),
        ("output_gate", "output gate o", "viridis", 0.0, 1.0),
        ("cell", "cell state c", "RdBu_r", -bound, bound),
    )
    for ax, (key, label, cmap, low, high) in zip(axes, panels, strict=True):
        image = ax.imshow(
            data[key].T, aspect="auto", cmap=cmap, vmin=low, vmax=high, interpolation="nearest"
        )
        ax.set_ylabel(f"{label}\nunit")
        ax.set_yticks(range(len(picked)), [str(u) for u in picked], fontsize=6)
        fig.colorbar(image, ax=ax, pad=0.01)
    direction = "backward (reads right to left)" if trace.backward else "forward"
    axes[0].set_title(title or f"Encoder LSTM, {direction}")
    axes[-1].set_xticks(range(len(tokens)), tokens, rotation=90)
    _save(fig, path)
    return fig, data


def plot_gradient_flow(
    layer: Mapping[str, LSTMTrace],
    gradients: Mapping[str, np.ndarray],
    tokens: Sequence[str],
    path: str | Path | None = None,
) -> tuple[Figure, dict[str, np.ndarray]]:
    """What reaches the context vector from each source position, per direction.

    Top: the mean over units of `LSTMTrace.retention()` (forget-gate products along the cell
    path). Bottom: `source_gradients` norms (log scale). The forward LSTM retains the end of
    the sentence best, the backward one the start: together the context vector covers both.

    Args:
        layer: the top layer's traces, `{"forward": ..., "backward": ...}`.
        gradients: `source_gradients(model, ids)`.
        tokens: the source pieces.
        path: PNG to write (3 + 0.3 inches per token wide, within 6 to 16; 6 high).

    Returns:
        The figure and the drawn data: `retention_forward`, `retention_backward`,
        `gradient_forward`, `gradient_backward`, each `[src]`.
    """
    data = {}
    for direction in ("forward", "backward"):
        data[f"retention_{direction}"] = layer[direction].retention().mean(axis=1)
        data[f"gradient_{direction}"] = np.asarray(gradients[direction], np.float64)
    for key, value in data.items():
        if len(value) != len(tokens):
            raise ValueError(f"{key} has {len(value)} positions, tokens has {len(tokens)}")
    fig = _figure(_width(len(tokens)), 6)
    top, bottom = fig.subplots(2, 1, sharex=True)
    positions = np.arange(len(tokens))
    for direction, marker in (("forward", "o-"), ("backward", "s-")):
        top.plot(positions, data[f"retention_{direction}"], marker, label=direction)
        bottom.semilogy(positions, data[f"gradient_{direction}"], marker, label=direction)
    top.set(ylabel="mean forget-gate product\nafter position t", ylim=(0, 1.05))
    top.set_title("What the final states keep of each source position")
    bottom.set(ylabel="|| d h_final / d x_t ||")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend()
    bottom.set_xticks(positions, tokens, rotation=90)
    _save(fig, path)
    return fig, data


def plot_context_vectors(
    vectors: np.ndarray,
    values: Sequence,
    label: str = "source length (pieces)",
    path: str | Path | None = None,
) -> tuple[Figure, dict[str, Any]]:
    """A 2-D PCA projection of context vectors, coloured by a number or a category per sentence.

    Args:
        vectors: `[n, d]`, e.g. the h of `context_vectors`.
        values: `[n]` numbers (a colour scale) or strings (one colour per category).
        label: what the values are (colour bar or legend title).
        path: PNG to write (700 x 550 pixels).

    Returns:
        The figure and the drawn data: `points` `[n, 2]`, `explained` `[2]`, `values` `[n]`.
    """
    points, explained = pca_2d(vectors)
    values = np.asarray(values)
    if len(values) != len(points):
        raise ValueError(f"{len(values)} values for {len(points)} vectors")
    fig = _figure(7, 5.5)
    ax = fig.subplots()
    if values.dtype.kind in "iuf":
        scatter = ax.scatter(points[:, 0], points[:, 1], c=values, cmap="viridis", s=12)
        fig.colorbar(scatter, ax=ax, label=label)
    else:
        for category in sorted(set(values.tolist())):
            chosen = values == category
            ax.scatter(points[chosen, 0], points[chosen, 1], s=12, label=str(category))
        ax.legend(title=label, fontsize=8, markerscale=1.5)
    ax.set(
        xlabel=f"PC 1 ({explained[0]:.0%} of variance)",
        ylabel=f"PC 2 ({explained[1]:.0%} of variance)",
        title="Context vectors (encoder final states), PCA",
    )
    ax.grid(alpha=0.3)
    _save(fig, path)
    return fig, {"points": points, "explained": explained, "values": values}


def plot_attention(
    attention: AttentionMap, path: str | Path | None = None
) -> tuple[Figure, np.ndarray]:
    """A heatmap of attention weights: target pieces down, source pieces across.

    Args:
        attention: from `attention_map`.
        path: PNG to write (2.5 + 0.35 inches per source piece wide, 2 + 0.3 per target
            piece high, each at most 20 inches).

    Returns:
        The figure and the drawn matrix `[tgt, src]` (`attention.weights`).
    """
    weights = attention.weights
    tgt, src = weights.shape
    fig = _figure(min(2.5 + 0.35 * src, 20), min(2 + 0.3 * tgt, 20))
    ax = fig.subplots()
    image = ax.imshow(weights, cmap="Greys", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(range(src), attention.source_pieces, rotation=90)
    ax.set_yticks(range(tgt), attention.target_pieces)
    ax.set(xlabel="source", ylabel="target (predicted piece)", title="Attention")
    fig.colorbar(image, ax=ax, shrink=0.8)
    _save(fig, path)
    return fig, weights


def write_attention_plot(
    translator: BaseTranslator,
    text: str,
    path: str | Path,
    translation: str | None = None,
    **decode_options,
) -> AttentionMap:
    """Writes the attention heatmap of `text` and its translation to `path` (a PNG).

    Args:
        translator: a `Translator` of an attention model, loaded from a training directory.
        text: the source sentence.
        path: the PNG to write.
        translation: the target side; default: the model's translation with `decode_options`.

    Returns:
        The plotted `AttentionMap`.
    """
    attention = attention_map(translator, text, translation, **decode_options)
    plot_attention(attention, path)
    return attention

"""Figures: training curves, LSTM gates, gradient flow, context vectors, attention, latency.

Every `plot_*` function draws data and returns `(figure, data)`, `data` being exactly the
numbers drawn, and writes a PNG when given a path. The numbers about the model's inside come
from `translator.introspect`; the training curves from a model directory's history.json.

Figures are `matplotlib.figure.Figure` objects on the Agg canvas: no pyplot state and no GUI
backend, so they work in servers, threads and tests. In a notebook, `IPython.display.display(fig)`
or `IPython.display.Image(path)` shows one. matplotlib is the `plots` extra.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from translator.errors import TranslatorError
from translator.introspect import AttentionMap, LSTMTrace, attention_map, pca_2d
from translator.model_dir import HISTORY_FILE

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from translator.translating import BaseTranslator

DPI = 100


class PlotError(TranslatorError):
    """A plot cannot be made from what was given (no history, no attention, no matplotlib)."""


# -- figure helpers ---------------------------------------------------------------------------


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


# -- training curves --------------------------------------------------------------------------


def load_history(history: str | Path | Sequence[Mapping]) -> list[dict]:
    """Per-epoch training records from a model directory, a history.json file, or a list.

    Raises:
        PlotError: the file is missing, not JSON, or not a non-empty list of epoch records.
    """
    if not isinstance(history, (str, Path)):
        records = [dict(r) for r in history]
        where = "history"
    else:
        path = Path(history)
        if path.is_dir():
            path = path / HISTORY_FILE
        if not path.is_file():
            raise PlotError(f"no training history: {path} not found")
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PlotError(f"{path}: not valid JSON ({exc})") from None
        where = str(path)
    if (
        not isinstance(records, list)
        or not records
        or not all(isinstance(r, dict) and "epoch" in r for r in records)
    ):
        raise PlotError(f"{where}: expected a non-empty list of per-epoch records")
    return records


def _series(records: list[dict], key: str) -> np.ndarray:
    """`records[i][key]` as float64 `[epochs]`, NaN where missing."""
    try:
        return np.array([float(r.get(key, np.nan)) for r in records], np.float64)
    except (TypeError, ValueError):
        raise PlotError(f"training history: '{key}' must be a number in every record") from None


def plot_loss(
    history: str | Path | Sequence[Mapping], path: str | Path | None = None
) -> tuple[Figure, dict[str, np.ndarray]]:
    """Training and validation loss (cross-entropy per target token) per epoch.

    Args:
        history: a model directory, its history.json, or the list of records.
        path: PNG to write (600 x 400 pixels).

    Returns:
        The figure and the drawn data: `epoch`, `train_loss` and, when validation ran,
        `valid_loss`, each `[epochs]`.
    """
    records = load_history(history)
    data = {"epoch": _series(records, "epoch"), "train_loss": _series(records, "train_loss")}
    valid = _series(records, "valid_loss")
    if not np.isnan(valid).all():
        data["valid_loss"] = valid
    fig = _figure(6, 4)
    ax = fig.subplots()
    ax.plot(data["epoch"], data["train_loss"], "o-", label="training")
    if "valid_loss" in data:
        ax.plot(data["epoch"], data["valid_loss"], "s-", label="validation")
    ax.set(xlabel="epoch", ylabel="cross-entropy per target token", title="Loss")
    _integer_ticks(ax)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    return fig, data


def plot_scores(
    history: str | Path | Sequence[Mapping], path: str | Path | None = None
) -> tuple[Figure, dict[str, np.ndarray]]:
    """Validation BLEU and chrF per epoch, with the best-BLEU epoch marked.

    Args:
        history: a model directory, its history.json, or the list of records.
        path: PNG to write (600 x 400 pixels).

    Returns:
        The figure and the drawn data: `epoch`, `valid_bleu`, `valid_chrf` `[epochs]` and
        `best_epoch` (the epoch whose checkpoint `best/` holds).

    Raises:
        PlotError: the run had no validation data, so there are no scores.
    """
    records = load_history(history)
    bleu = _series(records, "valid_bleu")
    if np.isnan(bleu).all():
        raise PlotError("the training history has no validation BLEU (no validation data)")
    epoch = _series(records, "epoch")
    data = {
        "epoch": epoch,
        "valid_bleu": bleu,
        "valid_chrf": _series(records, "valid_chrf"),
        "best_epoch": float(epoch[np.nanargmax(bleu)]),
    }
    fig = _figure(6, 4)
    ax = fig.subplots()
    ax.plot(epoch, bleu, "o-", label="BLEU")
    ax.plot(epoch, data["valid_chrf"], "s-", label="chrF")
    ax.axvline(data["best_epoch"], color="grey", linestyle=":", label="best BLEU")
    ax.set(xlabel="epoch", ylabel="score (0-100)", title="Validation scores")
    _integer_ticks(ax)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    return fig, data


def write_history_plots(directory: str | Path, output: str | Path | None = None) -> list[Path]:
    """Writes `loss.png` and (when validation ran) `scores.png` for a training directory.

    Args:
        directory: a training output directory holding history.json (or the file itself).
        output: directory for the PNGs; default `<directory>/plots`.

    Returns:
        The paths written.
    """
    records = load_history(directory)
    base = Path(directory)
    out = Path(output) if output is not None else (base if base.is_dir() else base.parent) / "plots"
    written = [out / "loss.png"]
    plot_loss(records, written[0])
    if any("valid_bleu" in r for r in records):
        written.append(out / "scores.png")
        plot_scores(records, written[1])
    return written


# -- inside the encoder ---------------------------------------------------------------------


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


# -- context vectors and attention ----------------------------------------------------------


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


# -- serving latency --------------------------------------------------------------------------


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

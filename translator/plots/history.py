"""Training curves from a model directory's history.json: losses and validation scores."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from translator.model_dir import HISTORY_FILE
from translator.plots.figures import PlotError, _figure, _integer_ticks, _save

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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

"""Writing an export: `export_model`, the SavedModel's module and signatures, atomic publishing.

`export_model(model_dir, "saved_models/NAME")` writes `saved_models/NAME/<version>/` in
TensorFlow Serving's layout (integer versions, the next free number). The graph holds the
SentencePiece models as bytes (tensorflow-text ops), so a client sends raw sentences and gets
raw translations back. Signatures (all string inputs named `text`, shape [batch]):

- `serving_default`: the config's decoding defaults (`decode.beam_size`, `length_penalty`,
  `max_length_ratio`), best hypothesis only: `translation` [batch] string, `score` [batch].
- `greedy`: beam size 1, same outputs.
- `beam`: beam search with `beam_size` and `n_best` fixed at export time (default 5 and 5):
  `translations` [batch, n_best] string, `scores` [batch, n_best] (best first; slots beam search
  could not fill are "" with score -inf).
- `model_info`: no input; languages, vocabulary fingerprints, training steps (-1 for an
  ensemble), export time, the decoding options of every signature (`decoders`, JSON), the
  `precision` the export computes in ("bfloat16" or "float32") and its `precision_check` (JSON,
  see below), and the models it was made from (`members`, JSON: directory, checkpoint,
  training steps and model config of each; one entry unless it is an ensemble).
- `attention`, for an attention model only: the greedy translation of each sentence with the
  teacher-forced attention weights [batch, tgt, src] and both sides' pieces (`attention.py`).

An ensemble (`export_model([dir1, dir2, ...])`, see `translator.ensemble`) exports as one
SavedModel with the same signatures: its members' variables, one pair of tokenizers, and the
mean of the members' log-probabilities decoded in the graph; its `attention` signature (when a
member has attention) gives the mean of the attention members' weights.

Each decoding signature wraps `api.build_translate_function`, the code path the Python API runs,
and is also saved as a plain function `decode_<signature>` returning that function's full dict,
which is what `Translator.load(export_dir)` uses (`loaded.py`). The version directory is
written into a hidden temporary sibling and renamed into place only after the parity gate
(`parity.py`) passed: a fresh Python process that imports nothing but tensorflow and
tensorflow_text has reloaded it and translated a validation sample exactly as the in-process
model does. On any failure nothing is left behind.

Precision (`precision="auto"`, the default): bfloat16 where the hardware runs it natively
(`translator.precision`), else float32. The model is then built under Keras's
`mixed_bfloat16` policy (variables stay float32, matmuls run in bfloat16) and must first pass
the precision gate (`parity.check_precision`: BLEU within 0.3 of the float32 model on the
validation sample, the share of identical translations reported); a float32 export translates
exactly as the float32 model does. A bfloat16 export saves the decoder's weights cast to
bfloat16 (`store_weights`: a call casts nothing) and translates a call of fewer than
`float32_below` rows (sentences x beam size; `model_info`'s `float32_below_rows`) in float32,
exactly as the float32 export: for a sentence or two bfloat16 is slower on CPU.

The graph translates each input whole: splitting inputs into sentences (`decode.split`,
`splitting.py`) is not in it, because the sentence splitter (sentencex) is not a TensorFlow op.
The Python side does it for an export: `Translator.load(export_dir)` and `translator serve`
split inputs before calling the graph and join the results; TensorFlow Serving's own binary,
given the same export, does not split.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import tensorflow as tf

from translator import __version__
from translator.api import Translator
from translator.config import load_config
from translator.constants import FLOAT32_BELOW_ROWS
from translator.errors import ExportError, ModelDirError
from translator.export.attention import build_attention_function
from translator.export.layout import (
    ASSETS_DIR,
    ATTENTION_SIGNATURE,
    BEAM_SIGNATURE,
    DEFAULT_SIGNATURE,
    GREEDY_SIGNATURE,
    INFO_ASSET,
    INFO_SIGNATURE,
    MODEL_DIR_ASSETS,
    decode_function,
    dump_decoders,
    next_version,
    resolve_export_dir,
)
from translator.export.parity import (
    BLEU_TOLERANCE,
    PARITY_SENTENCES,
    PRECISION_SENTENCES,
    check_parity,
    check_precision,
    parity_sample,
    quality_sample,
)
from translator.model_dir import CONFIG_FILE, find_checkpoint
from translator.precision import inference_precision
from translator.translating import DecodeOptions

log = logging.getLogger(__name__)

INPUT_NAME = "text"
DEFAULT_BEAM_SIZE = 5


# -- the exported module ---------------------------------------------------------------------


def _export_module(
    translator_: Translator, decoders: dict[str, DecodeOptions], info: dict
) -> tuple[tf.Module, dict[str, tf.types.experimental.ConcreteFunction]]:
    """The object a SavedModel must hold (model variables, both tokenizer resources, the
    decoding functions that capture them) and its signatures."""
    module = tf.Module(name="translator_export")
    module.model = translator_.model
    # bfloat16 copies of the decoder weights, cast at export time: a call casts nothing
    module.stored_weights = translator_.model.stored_weights()
    module.source_tokenizer = translator_.tokenizers.source
    module.target_tokenizer = translator_.tokenizers.target
    signatures = {}
    for name, options in decoders.items():
        fn = translator_.translate_function(*options)
        setattr(module, decode_function(name), fn)
        wrapper = _n_best(fn) if name == BEAM_SIGNATURE else _best_only(fn)
        signatures[name] = wrapper.get_concrete_function()
    constants = {k: tf.constant(v) for k, v in info.items()}
    model_info = tf.function(lambda: dict(constants), input_signature=[])
    signatures[INFO_SIGNATURE] = model_info.get_concrete_function()
    if translator_.model.attention != "none":
        signatures[ATTENTION_SIGNATURE] = _attention(translator_).get_concrete_function()
    return module, signatures


def _attention(translator_: Translator) -> tf.types.experimental.GenericFunction:
    """The `attention` signature's function, over the greedy decoder's translations."""
    d = translator_.config.decode
    greedy = translator_.translate_function(1, 1, d.length_penalty, d.max_length_ratio)
    return build_attention_function(
        translator_.model, translator_.tokenizers, greedy, d.max_source_length
    )


def _best_only(fn) -> tf.types.experimental.GenericFunction:
    @tf.function(
        input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_NAME)], autograph=False
    )
    def serve(text: tf.Tensor) -> dict[str, tf.Tensor]:
        out = fn(text)
        return {"translation": out["translations"][:, 0], "score": out["scores"][:, 0]}

    return serve


def _n_best(fn) -> tf.types.experimental.GenericFunction:
    @tf.function(
        input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_NAME)], autograph=False
    )
    def serve(text: tf.Tensor) -> dict[str, tf.Tensor]:
        out = fn(text)
        return {"translations": out["translations"], "scores": out["scores"]}

    return serve


def _decoders(translator_: Translator, beam_size: int, n_best: int) -> dict[str, DecodeOptions]:
    """The three decoders: the config's default decoding, greedy, and the n-best beam."""
    d = translator_.config.decode
    return {
        DEFAULT_SIGNATURE: DecodeOptions(d.beam_size, 1, d.length_penalty, d.max_length_ratio),
        GREEDY_SIGNATURE: DecodeOptions(1, 1, d.length_penalty, d.max_length_ratio),
        BEAM_SIGNATURE: DecodeOptions(beam_size, n_best, d.length_penalty, d.max_length_ratio),
    }


def _training_steps(checkpoint_path: str) -> int:
    """The step counter saved in a checkpoint (both checkpoint managers save `step`)."""
    try:
        return int(
            tf.train.load_checkpoint(checkpoint_path).get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")
        )
    except (tf.errors.OpError, ValueError):
        match = re.search(r"ckpt-(\d+)$", checkpoint_path)
        return int(match.group(1)) if match else -1


# -- export ----------------------------------------------------------------------------------


def export_model(
    model_dir: str | Path | Sequence[str | Path],
    output: str | Path,
    beam_size: int | None = None,
    n_best: int | None = None,
    checkpoint: str = "best",
    parity_sentences: int | None = None,
    precision: str = "auto",
    bleu_tolerance: float = BLEU_TOLERANCE,
    precision_sentences: int = PRECISION_SENTENCES,
    store_weights: bool = True,
    float32_below: int = FLOAT32_BELOW_ROWS,
) -> Path:
    """Exports a trained model directory, or an ensemble of them, as the next version under
    `output`.

    Args:
        model_dir: the training output directory (config.yaml, SentencePiece models,
            checkpoints), or a list of them: an ensemble (`Translator.from_model_dirs`); its
            assets are the first member's.
        output: the export base directory, e.g. `saved_models/NAME`; created when missing.
        beam_size: beam size of the `beam` signature (default 5).
        n_best: hypotheses returned by the `beam` signature (default: `beam_size`).
        checkpoint: "best" or "latest", as in `Translator.load`.
        parity_sentences: validation sentences the reloaded export must translate exactly as the
            in-process model (default 64; an empty string is always added).
        precision: "auto" (bfloat16 where the hardware runs it natively, see
            `translator.precision`), "bfloat16" or "float32": what the export computes in.
            A bfloat16 export must pass `parity.check_precision` (BLEU within
            `bleu_tolerance` of float32 on `precision_sentences` validation pairs); with
            "auto", no validation data to check it on or a failed check gives a float32 export.
        bleu_tolerance: the bfloat16 gate's tolerance in BLEU points.
        precision_sentences: validation pairs the bfloat16 gate translates.
        store_weights: a bfloat16 export saves the decoder's weights cast to bfloat16 (cast
            once, at export; about 2 bytes per decoder weight more on disk) so a call casts
            nothing; False casts them in every call. Translations are the same.
        float32_below: a bfloat16 export translates a call of fewer rows (sentences x beam
            size) in float32, exactly as the float32 export (0: always bfloat16).

    Returns:
        The new version directory, e.g. `saved_models/NAME/3`.

    Raises:
        ExportError: bad options, an unwritable output, or a failed parity check; nothing
            is left behind.
        ModelDirError: `model_dir` is not a trained model directory.
        EnsembleError: the members of an ensemble cannot be decoded together.
    """
    beam_size = DEFAULT_BEAM_SIZE if beam_size is None else beam_size
    n_best = beam_size if n_best is None else n_best
    parity_sentences = PARITY_SENTENCES if parity_sentences is None else parity_sentences
    if beam_size < 1 or not 1 <= n_best <= beam_size:
        raise ExportError(
            f"need --beam-size >= 1 and 1 <= --n-best <= --beam-size, "
            f"got beam size {beam_size}, n-best {n_best}"
        )
    if parity_sentences < 1:
        raise ExportError(f"parity_sentences must be >= 1, got {parity_sentences}")
    if precision_sentences < 1:
        raise ExportError(f"precision_sentences must be >= 1, got {precision_sentences}")
    if float32_below < 0:
        raise ExportError(f"float32_below must be >= 0, got {float32_below}")
    single = isinstance(model_dir, (str, os.PathLike))
    model_dirs = [Path(model_dir)] if single else [Path(d) for d in model_dir]
    for directory in model_dirs:
        if resolve_export_dir(directory) is not None:
            raise ModelDirError(f"{directory} is already an export, not a trained model directory")
    translator_ = _load(model_dirs, checkpoint, "float32")
    decoders = _decoders(translator_, beam_size, n_best)
    translator_, chosen, check = _in_precision(
        translator_,
        model_dirs,
        checkpoint,
        decoders,
        precision,
        bleu_tolerance,
        precision_sentences,
        store_weights,
    )
    translator_.float32_below = float32_below if chosen == "bfloat16" else 0
    info = _model_info(translator_, decoders, _members(model_dirs, checkpoint))
    info["precision"] = chosen
    info["float32_below_rows"] = np.int64(translator_.float32_below)
    info["precision_check"] = json.dumps(check or {}, sort_keys=True)
    sample = parity_sample(translator_, parity_sentences)

    base = Path(output)
    created = [d for d in (base, *base.parents) if not d.exists()]  # removed again on failure
    tmp: Path | None = None
    try:
        try:
            base.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".export-", suffix=".tmp", dir=base))
            _write(tmp, translator_, decoders, info, model_dirs[0])
        except OSError as exc:
            raise ExportError(f"cannot write export to {base}: {exc.strerror or exc}") from None
        check_parity(tmp, translator_, decoders, sample)
        version_dir = _publish(tmp, base)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for directory in created:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only empty directories go
        raise
    names = ", ".join(str(d) for d in model_dirs)
    log.info("exported %s (step %d) to %s", names, info["training_steps"], version_dir)
    return version_dir


def _in_precision(
    float32: Translator,
    model_dirs: Sequence[Path],
    checkpoint: str,
    decoders: dict[str, DecodeOptions],
    precision: str,
    tolerance: float,
    sentences: int,
    store_weights: bool = True,
) -> tuple[Translator, str, dict | None]:
    """The translator to export for `precision` ("auto", "bfloat16" or "float32"), the
    precision chosen, and the bfloat16 gate's report (None in float32).

    Raises:
        ExportError: an unknown precision, or an explicit "bfloat16" that failed its check
            or cannot be checked ("auto" falls back to float32 then, with a warning).
    """
    try:
        chosen, why = inference_precision(precision)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    translator_, check = float32, None
    if chosen == "bfloat16":
        try:
            translator_, check = _bfloat16(
                float32,
                model_dirs,
                checkpoint,
                decoders,
                precision,
                tolerance,
                sentences,
                store_weights,
            )
        except ExportError as exc:
            if precision != "auto":
                raise
            # auto means "bfloat16 where it keeps the quality": a failed gate falls back.
            log.warning("%s; exporting in float32", exc)
            return float32, "float32", None
        if check is None:
            chosen, why = "float32", f"{why}, but no validation data to check bfloat16 on"
    log.info("exporting in %s (%s)", chosen, why)
    return translator_, chosen, check


def _bfloat16(
    float32: Translator,
    model_dirs: Sequence[Path],
    checkpoint: str,
    decoders: dict[str, DecodeOptions],
    setting: str,
    tolerance: float,
    sentences: int,
    store_weights: bool = True,
) -> tuple[Translator, dict | None]:
    """The bfloat16 translator and its precision check against `float32`, or (`float32`,
    None) when `setting` is "auto" and there is no validation data to check on.

    Raises:
        ExportError: the check failed, or "bfloat16" was asked and cannot be checked.
    """
    sample = quality_sample(float32, sentences)
    if sample is None:
        if setting == "auto":
            log.warning("no validation data to check bfloat16 on: exporting in float32")
            return float32, None
        raise ExportError(
            "cannot check a bfloat16 export: no validation split with references can be read; "
            "export with --precision float32"
        )
    candidate = _load(model_dirs, checkpoint, "bfloat16", store_weights)
    return candidate, check_precision(candidate, float32, decoders, sample, tolerance)


def _load(
    model_dirs: Sequence[Path], checkpoint: str, precision: str, store_weights: bool = True
) -> Translator:
    """The translator of one model directory, or the ensemble of several, in `precision`."""
    if len(model_dirs) == 1:
        return Translator.from_model_dir(model_dirs[0], checkpoint, precision, store_weights)
    return Translator.from_model_dirs(model_dirs, checkpoint, precision, store_weights)


def _members(model_dirs: Sequence[Path], checkpoint: str) -> list[dict]:
    """What `model_info` records of each model an export is made from."""
    members = []
    for directory in model_dirs:
        path = find_checkpoint(directory, checkpoint)
        config = load_config(directory / CONFIG_FILE)
        members.append(
            {
                "model_dir": str(directory.resolve()),
                "checkpoint": os.path.basename(path),
                "training_steps": _training_steps(path),
                "model": asdict(config.model),
            }
        )
    return members


def _model_info(
    translator_: Translator, decoders: dict[str, DecodeOptions], members: list[dict]
) -> dict:
    config, fingerprints = translator_.config, translator_.tokenizers.fingerprints()
    steps = members[0]["training_steps"] if len(members) == 1 else -1
    return {
        "source_lang": config.data.source_lang,
        "target_lang": config.data.target_lang,
        "source_vocab_fingerprint": fingerprints["source"],
        "target_vocab_fingerprint": fingerprints["target"],
        "training_steps": np.int64(steps),
        "export_time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "translator_version": __version__,
        "decoders": dump_decoders(decoders),
        "members": json.dumps(members, sort_keys=True),
    }


def _write(
    directory: Path,
    translator_: Translator,
    decoders: dict[str, DecodeOptions],
    info: dict,
    model_dir: Path,
) -> None:
    """Saves the SavedModel into `directory`, then the SentencePiece models and config as
    assets (for people and tools; the graph already holds the model bytes)."""
    module, signatures = _export_module(translator_, decoders, info)
    tf.saved_model.save(module, str(directory), signatures=signatures)
    assets = directory / ASSETS_DIR
    assets.mkdir(exist_ok=True)
    for name in MODEL_DIR_ASSETS:
        shutil.copyfile(model_dir / name, assets / name)
    readable = {k: (int(v) if isinstance(v, np.integer) else v) for k, v in info.items()}
    readable["decoders"] = json.loads(info["decoders"])
    readable["precision_check"] = json.loads(info["precision_check"])
    readable["members"] = json.loads(info["members"])
    (assets / INFO_ASSET).write_text(json.dumps(readable, indent=1) + "\n", encoding="utf-8")


def _publish(tmp: Path, base: Path) -> Path:
    """Renames the finished temporary directory to the next free version number.

    `rename` of a directory onto an existing non-empty one fails, so two concurrent exports
    never overwrite each other: the loser retries with the next number.
    """
    for _ in range(100):
        target = base / str(next_version(base))
        try:
            os.rename(tmp, target)
            return target
        except OSError:
            if not target.exists():
                raise
    raise ExportError(f"could not find a free version number under {base}")

"""SavedModel export: string in, string out, tokenization inside the graph, versioned, atomic.

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
- `model_info`: no input; languages, vocabulary fingerprints, training steps, export time and
  the decoding options of every signature (`decoders`, JSON).
- `attention`, for an attention model only: the greedy translation of each sentence with the
  teacher-forced attention weights [batch, tgt, src] and both sides' pieces (`attention.py`).

Each decoding signature wraps `api.build_translate_function`, the code path the Python API runs,
and is also saved as a plain function `decode_<signature>` returning that function's full dict,
which is what `Translator.load(export_dir)` uses. The version directory is written into a hidden
temporary sibling and renamed into place only after a fresh Python process that imports nothing
but tensorflow and tensorflow_text has reloaded it and translated a validation sample exactly
as the in-process model does; on any failure nothing is left behind.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm
import tensorflow as tf

import translator
from translator import data as data_lib
from translator.api import Translator, find_checkpoint
from translator.config import load_config
from translator.errors import ModelDirError, TranslatorError
from translator.export.attention import build_attention_function
from translator.export.layout import (
    ATTENTION_SIGNATURE,
    DecodeOptions,
    next_version,
    pick_decoder,
    resolve_export_dir,
)
from translator.tokenizer import SOURCE_FILE, TARGET_FILE

log = logging.getLogger(__name__)

INPUT_NAME = "text"
DEFAULT_BEAM_SIZE = 5
PARITY_SENTENCES = 64
CONFIG_ASSET = "config.yaml"
INFO_ASSET = "export.json"

# Run by the parity gate in a fresh interpreter (`python -I -c`): it must import nothing but
# tensorflow and tensorflow_text, which proves a client needs no `translator` code.
_RELOAD_SCRIPT = r"""
import json, sys
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the SentencePiece ops)

def plain(x):
    if isinstance(x, list):
        return [plain(i) for i in x]
    return x.decode("utf-8") if isinstance(x, bytes) else x

request = json.load(sys.stdin)
loaded = tf.saved_model.load(request["dir"])
text = tf.constant(request["sentences"], tf.string)
result = {
    name: {k: plain(v.numpy().tolist()) for k, v in loaded.signatures[name](text=text).items()}
    for name in request["signatures"]
}
leaked = sorted(m for m in sys.modules if m.split(".")[0] == "translator")
if leaked:
    sys.exit(f"the export imported translator modules: {leaked}")
json.dump(result, sys.stdout)
"""


class ExportError(TranslatorError):
    """An export cannot be written, or failed its parity check."""


# -- the exported module ---------------------------------------------------------------------


def _export_module(
    translator_: Translator, decoders: dict[str, DecodeOptions], info: dict
) -> tuple[tf.Module, dict[str, tf.types.experimental.ConcreteFunction]]:
    """The object a SavedModel must hold (model variables, both tokenizer resources, the
    decoding functions that capture them) and its signatures."""
    module = tf.Module(name="translator_export")
    module.model = translator_.model
    module.source_tokenizer = translator_.tokenizers.source
    module.target_tokenizer = translator_.tokenizers.target
    signatures = {}
    for name, options in decoders.items():
        fn = translator_.translate_function(*options)
        setattr(module, f"decode_{name}", fn)
        wrapper = _n_best(fn) if name == "beam" else _best_only(fn)
        signatures[name] = wrapper.get_concrete_function()
    constants = {k: tf.constant(v) for k, v in info.items()}
    model_info = tf.function(lambda: dict(constants), input_signature=[])
    signatures["model_info"] = model_info.get_concrete_function()
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
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_NAME)])
    def serve(text: tf.Tensor) -> dict[str, tf.Tensor]:
        out = fn(text)
        return {"translation": out["translations"][:, 0], "score": out["scores"][:, 0]}

    return serve


def _n_best(fn) -> tf.types.experimental.GenericFunction:
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_NAME)])
    def serve(text: tf.Tensor) -> dict[str, tf.Tensor]:
        out = fn(text)
        return {"translations": out["translations"], "scores": out["scores"]}

    return serve


def _decoders(translator_: Translator, beam_size: int, n_best: int) -> dict[str, DecodeOptions]:
    d = translator_.config.decode
    return {
        "serving_default": DecodeOptions(d.beam_size, 1, d.length_penalty, d.max_length_ratio),
        "greedy": DecodeOptions(1, 1, d.length_penalty, d.max_length_ratio),
        "beam": DecodeOptions(beam_size, n_best, d.length_penalty, d.max_length_ratio),
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
    model_dir: str | Path,
    output: str | Path,
    beam_size: int | None = None,
    n_best: int | None = None,
    checkpoint: str = "best",
    parity_sentences: int | None = None,
) -> Path:
    """Exports a trained model directory as the next version under `output`.

    Args:
        model_dir: the training output directory (config.yaml, SentencePiece models, checkpoints).
        output: the export base directory, e.g. `saved_models/NAME`; created when missing.
        beam_size: beam size of the `beam` signature (default 5).
        n_best: hypotheses returned by the `beam` signature (default: `beam_size`).
        checkpoint: "best" or "latest", as in `Translator.load`.
        parity_sentences: validation sentences the reloaded export must translate exactly as the
            in-process model (default 64; an empty string is always added).

    Returns:
        The new version directory, e.g. `saved_models/NAME/3`.

    Raises:
        ExportError: bad options, an unwritable output, or a failed parity check; nothing
            is left behind.
        ModelDirError: `model_dir` is not a trained model directory.
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
    model_dir = Path(model_dir)
    if resolve_export_dir(model_dir) is not None:
        raise ModelDirError(f"{model_dir} is already an export, not a trained model directory")
    translator_ = Translator.load(model_dir, checkpoint)
    checkpoint_path = find_checkpoint(model_dir, checkpoint)
    decoders = _decoders(translator_, beam_size, n_best)
    info = _model_info(translator_, decoders, _training_steps(checkpoint_path))
    sample = _parity_sample(translator_, parity_sentences)

    base = Path(output)
    created = [d for d in (base, *base.parents) if not d.exists()]  # removed again on failure
    tmp: Path | None = None
    try:
        try:
            base.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".export-", suffix=".tmp", dir=base))
            _write(tmp, translator_, decoders, info, model_dir)
        except OSError as exc:
            raise ExportError(f"cannot write export to {base}: {exc.strerror or exc}") from None
        _check_parity(tmp, translator_, decoders, sample)
        version_dir = _publish(tmp, base)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for directory in created:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only empty directories go
        raise
    log.info("exported %s (step %d) to %s", model_dir, info["training_steps"], version_dir)
    return version_dir


def _model_info(translator_: Translator, decoders: dict[str, DecodeOptions], steps: int) -> dict:
    config, fingerprints = translator_.config, translator_.tokenizers.fingerprints()
    return {
        "source_lang": config.data.source_lang,
        "target_lang": config.data.target_lang,
        "source_vocab_fingerprint": fingerprints["source"],
        "target_vocab_fingerprint": fingerprints["target"],
        "training_steps": np.int64(steps),
        "export_time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "translator_version": translator.__version__,
        "decoders": json.dumps({k: v._asdict() for k, v in decoders.items()}, sort_keys=True),
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
    assets = directory / "assets"
    assets.mkdir(exist_ok=True)
    for name in (SOURCE_FILE, TARGET_FILE, CONFIG_ASSET):
        shutil.copyfile(model_dir / name, assets / name)
    readable = {k: (int(v) if isinstance(v, np.integer) else v) for k, v in info.items()}
    readable["decoders"] = json.loads(info["decoders"])
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


# -- parity gate -----------------------------------------------------------------------------


def _parity_sample(translator_: Translator, n: int) -> list[str]:
    """The first `n` validation sources (test or train when there is no validation split),
    or, when no corpus can be read here, sentences made of source vocabulary pieces."""
    data = translator_.config.data
    for split in ("valid", "test", "train"):
        if not (getattr(data, split).source or data.tfds):
            continue
        try:
            sources = data_lib.load_corpus(data, split).sources
        except TranslatorError as exc:
            log.warning("parity sample: cannot read the %s split (%s)", split, exc)
            break
        return sources[:n] + [""]
    log.warning("parity sample: using %d sentences made of source vocabulary pieces", n)
    return _vocabulary_sample(translator_.tokenizers.source_model, n) + [""]


def _vocabulary_sample(model: bytes, n: int, seed: int = 0) -> list[str]:
    processor = spm.SentencePieceProcessor()
    processor.LoadFromSerializedProto(model)
    rng = random.Random(seed)
    size = processor.GetPieceSize()
    return [
        processor.DecodeIds([rng.randrange(4, size) for _ in range(rng.randint(1, 12))])
        for _ in range(n)
    ]


def _reference(
    translator_: Translator, decoders: dict[str, DecodeOptions], sample: Sequence[str]
) -> dict[str, dict[str, list]]:
    """What each decoding signature must return, computed by the in-process functions."""
    text = tf.constant(list(sample), tf.string)
    result = {}
    for name, options in decoders.items():
        out = translator_.translate_function(*options)(text)
        translations = [[t.decode("utf-8") for t in row] for row in out["translations"].numpy()]
        scores = out["scores"].numpy().tolist()
        if name == "beam":
            result[name] = {"translations": translations, "scores": scores}
        else:
            result[name] = {
                "translation": [row[0] for row in translations],
                "score": [row[0] for row in scores],
            }
    return result


def reload_in_subprocess(
    version_dir: str | Path, sentences: Sequence[str], signatures: Sequence[str]
) -> dict[str, dict[str, list]]:
    """Loads an export in a fresh interpreter importing only tensorflow and tensorflow_text
    and returns each signature's outputs on `sentences` (strings decoded, lists nested)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    request = {
        "dir": str(version_dir),
        "sentences": list(sentences),
        "signatures": list(signatures),
    }
    proc = subprocess.run(
        [sys.executable, "-I", "-c", _RELOAD_SCRIPT],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ExportError(f"reloading the export in a fresh process failed: {last}")
    return json.loads(proc.stdout)


def _check_parity(
    directory: Path,
    translator_: Translator,
    decoders: dict[str, DecodeOptions],
    sample: Sequence[str],
) -> None:
    expected = _reference(translator_, decoders, sample)
    actual = reload_in_subprocess(directory, sample, list(decoders))
    for name, outputs in expected.items():
        for key, want in outputs.items():
            got = actual.get(name, {}).get(key)
            if got is None or len(got) != len(want):
                raise ExportError(f"parity check failed: signature '{name}' output '{key}' missing")
            for i, (w, g) in enumerate(zip(want, got, strict=True)):
                same = w == g if "translation" in key else _close(w, g)
                if not same:
                    raise ExportError(
                        f"parity check failed: signature '{name}' output '{key}' differs on "
                        f"sample sentence {i} ({sample[i]!r}): exported {g!r}, in-process {w!r}"
                    )


def _close(a: float | list, b: float | list) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    finite = np.isfinite(a)
    return bool(
        np.array_equal(finite, np.isfinite(b))
        and np.array_equal(a[~finite], b[~finite])
        and np.allclose(a[finite], b[finite], rtol=1e-5, atol=1e-5)
    )


# -- loading an export through the Python API -----------------------------------------------


class ExportedTranslator(Translator):
    """A SavedModel export behind the `Translator` API (`Translator.load` returns one for an
    export directory). It decodes with the functions baked in at export time, so decoding
    options must match one of them (`decoders`); `model` and `tokenizers` are None.
    """

    def __init__(self, loaded, config, info: dict, directory: Path):
        super().__init__(None, None, config)
        self.loaded = loaded
        self.info = info
        self.directory = directory
        self.decoders = {
            name: DecodeOptions(**options) for name, options in json.loads(info["decoders"]).items()
        }

    @classmethod
    def load(cls, directory: str | Path, checkpoint: str = "best") -> ExportedTranslator:
        """Loads an export version directory or the highest version of an export base dir."""
        import tensorflow_text  # noqa: F401, PLC0415  (registers the SentencePiece ops)

        version_dir = resolve_export_dir(directory)
        if version_dir is None:
            raise ModelDirError(f"{directory} is not a SavedModel export")
        config_path = version_dir / "assets" / CONFIG_ASSET
        if not config_path.is_file():
            raise ModelDirError(f"export {version_dir} has no assets/{CONFIG_ASSET}")
        config = load_config(config_path)
        try:
            loaded = tf.saved_model.load(str(version_dir))
            info = {
                k: v.numpy().decode("utf-8") if v.dtype == tf.string else v.numpy().item()
                for k, v in loaded.signatures["model_info"]().items()
            }
        except (tf.errors.OpError, KeyError, OSError, ValueError) as exc:
            raise ModelDirError(f"cannot load export {version_dir}: {exc}") from None
        return cls(loaded, config, info, version_dir)

    def translate_function(
        self, beam_size: int, n_best: int, length_penalty: float, max_length_ratio: float
    ):
        """The exported function for these options (`layout.pick_decoder`); top-n of a longer
        n-best list is the same as asking for n."""
        try:
            name = pick_decoder(self.decoders, beam_size, n_best, length_penalty, max_length_ratio)
        except ValueError as exc:
            raise ValueError(f"export {self.directory}: {exc}") from None
        fn = getattr(self.loaded, f"decode_{name}")
        if n_best == self.decoders[name].n_best:
            return fn
        return lambda text: {
            k: v if k == "source_lengths" else v[:, :n_best] for k, v in fn(text).items()
        }

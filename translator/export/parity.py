"""The gates an export passes before it is published: precision, then parity.

`check_precision`, for a bfloat16 export, before anything is written: on a validation sample
(`quality_sample`, default 500 pairs) the bfloat16 model's best translations must score a
BLEU within `BLEU_TOLERANCE` (0.3) of the float32 model's, for every decoding the export
holds (greedy and beam); the share of identical sentences is reported with the BLEUs.

`check_parity`: the writer saves the export into a hidden directory and a Python process that
imports nothing but tensorflow and tensorflow_text (`reload_in_subprocess`) reloads it and
translates a sample (`parity_sample`: validation sources, or sentences made of vocabulary
pieces, plus an empty string) with every decoding signature; each output must equal what the
in-process translate functions (of the export's precision) return (texts exactly, scores to
1e-5).
"""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import sentencepiece as spm
import tensorflow as tf

from translator import data as data_lib
from translator.errors import ExportError, TranslatorError
from translator.evaluate import score
from translator.export.layout import BEAM_SIGNATURE
from translator.translating import DecodeOptions

if TYPE_CHECKING:
    from translator.api import Translator

log = logging.getLogger(__name__)

PARITY_SENTENCES = 64
PRECISION_SENTENCES = 500  # validation pairs the bfloat16 quality gate translates
BLEU_TOLERANCE = 0.3  # the most a bfloat16 export's BLEU may differ from float32's

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


def parity_sample(translator_: Translator, n: int) -> list[str]:
    """The first `n` validation sources (test or train when there is no validation split),
    or, when no corpus can be read here, sentences made of source vocabulary pieces; an empty
    string last."""
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


def quality_sample(translator_: Translator, n: int) -> tuple[list[str], list[str]] | None:
    """The first `n` validation pairs `(sources, references)` (test or train when there is no
    validation split), or None when no corpus can be read here."""
    data = translator_.config.data
    for split in ("valid", "test", "train"):
        if not (getattr(data, split).source or data.tfds):
            continue
        try:
            corpus = data_lib.load_corpus(data, split)
        except TranslatorError as exc:
            log.warning("precision check: cannot read the %s split (%s)", split, exc)
            return None
        if corpus.targets:
            return list(corpus.sources[:n]), list(corpus.targets[:n])
    return None


def check_precision(
    candidate: Translator,
    reference: Translator,
    decoders: Mapping[str, DecodeOptions],
    sample: tuple[Sequence[str], Sequence[str]],
    tolerance: float = BLEU_TOLERANCE,
) -> dict:
    """Compares `candidate` (bfloat16) with `reference` (float32) on a validation sample.

    Each distinct decoding of `decoders` (n-best aside) translates `sample`'s sources with
    both; the candidate's BLEU against the references must be within `tolerance` of the
    reference's.

    Returns:
        The report: `{"sentences", "tolerance", "decoders": {name: {"bleu_float32",
        "bleu_bfloat16", "identical"}}}`, `identical` being the share of sentences whose best
        translation is the same string in both.

    Raises:
        ExportError: a decoding's BLEU differs by more than `tolerance`; the message has the
            report's figures.
    """
    sources, references = list(sample[0]), list(sample[1])
    report = {"sentences": len(sources), "tolerance": tolerance, "decoders": {}}
    seen = set()
    for name, options in decoders.items():
        key = (options.beam_size, options.length_penalty, options.max_length_ratio)
        if key in seen:
            continue
        seen.add(key)
        kwargs = {"beam_size": key[0], "length_penalty": key[1], "max_length_ratio": key[2]}
        fast = candidate.translate(sources, n_best=1, **kwargs)
        exact = reference.translate(sources, n_best=1, **kwargs)
        bleu_fast, bleu_exact = score(fast, references)["bleu"], score(exact, references)["bleu"]
        same = sum(a == b for a, b in zip(fast, exact, strict=True)) / max(len(sources), 1)
        row = {"bleu_float32": bleu_exact, "bleu_bfloat16": bleu_fast, "identical": round(same, 3)}
        report["decoders"][name] = row
        log.info("precision check, %s (beam %d): %s", name, key[0], row)
        if not abs(bleu_fast - bleu_exact) <= tolerance:
            raise ExportError(
                f"precision check failed: bfloat16 BLEU {bleu_fast} vs float32 {bleu_exact} "
                f"with the '{name}' decoder (beam {key[0]}) on {len(sources)} validation "
                f"sentences, more than the tolerance {tolerance} apart ({same:.1%} of the "
                "translations identical); export with --precision float32"
            )
    return report


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
    translator_: Translator, decoders: Mapping[str, DecodeOptions], sample: Sequence[str]
) -> dict[str, dict[str, list]]:
    """What each decoding signature must return, computed by the in-process functions."""
    text = tf.constant(list(sample), tf.string)
    result = {}
    for name, options in decoders.items():
        out = translator_.translate_function(*options)(text)
        translations = [[t.decode("utf-8") for t in row] for row in out["translations"].numpy()]
        scores = out["scores"].numpy().tolist()
        if name == BEAM_SIGNATURE:
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


def check_parity(
    directory: Path,
    translator_: Translator,
    decoders: Mapping[str, DecodeOptions],
    sample: Sequence[str],
) -> None:
    """Raises ExportError unless the export in `directory`, reloaded in a fresh process,
    returns on `sample` what `translator_` returns in this one, for every decoder."""
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

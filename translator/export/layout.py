"""An export's on-disk layout and the decoders it holds; no TensorFlow.

`BASE/<version>/` in TensorFlow Serving's layout: integer versions, a version counting only
once its `saved_model.pb` is in place (an export in progress is a hidden sibling). The names
the writer and the loader of an export must agree on live here: the assets, the signatures,
the plain `decode_<signature>` functions. Each export records its decoders (decoding options
baked into one signature each) in `model_info` as JSON (`dump_decoders` / `load_decoders`);
`pick_decoder` is the one rule, used by the Python API and by the server, that maps a
requested beam size and n-best to one of them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

from translator.model_dir import CONFIG_FILE, SOURCE_SPM, TARGET_SPM
from translator.translating import DecodeOptions

SAVED_MODEL_FILE = "saved_model.pb"
_VERSION = re.compile(r"^[0-9]{1,18}$")

# A version's assets/ (for people and tools; the graph holds the SentencePiece models itself):
# the training directory's SentencePiece models and config under their own names, and
# export.json, model_info in readable form.
ASSETS_DIR = "assets"
CONFIG_ASSET = CONFIG_FILE
MODEL_DIR_ASSETS = (SOURCE_SPM, TARGET_SPM, CONFIG_FILE)
INFO_ASSET = "export.json"

# Signatures: three decoders (the config's default decoding, best only; greedy; an n-best beam)
# and model_info (no input). Each decoder is also saved as a plain function (`decode_function`)
# returning the translate function's full dict, which is what the Python API calls.
DEFAULT_SIGNATURE = "serving_default"
GREEDY_SIGNATURE = "greedy"
BEAM_SIGNATURE = "beam"
INFO_SIGNATURE = "model_info"
# An attention model's export also has this signature: text [batch] -> the greedy translation,
# its source and target pieces and the teacher-forced attention weights [batch, tgt, src].
ATTENTION_SIGNATURE = "attention"


def decode_function(signature: str) -> str:
    """The attribute of the saved module holding the full translate function of `signature`."""
    return f"decode_{signature}"


def dump_decoders(decoders: Mapping[str, DecodeOptions]) -> str:
    """The decoders as model_info records them (JSON, signature name -> options)."""
    return json.dumps({k: v._asdict() for k, v in decoders.items()}, sort_keys=True)


def load_decoders(text: str) -> dict[str, DecodeOptions]:
    """The decoders recorded in model_info by `dump_decoders`."""
    return {name: DecodeOptions(**options) for name, options in json.loads(text).items()}


def source_sentencepiece(version_dir: str | Path) -> bytes | None:
    """The source SentencePiece model in a version's assets, which the Python side chunks
    over-long sentences with (`splitting.Splitter`); None when it is not there."""
    path = Path(version_dir) / ASSETS_DIR / SOURCE_SPM
    return path.read_bytes() if path.is_file() else None


class NoDecoderError(ValueError):
    """No decoder of an export serves the requested options."""


def is_version_name(name: str) -> bool:
    """Whether `name` spells a version number (1 to 18 digits, TF Serving's rule)."""
    return bool(_VERSION.match(name))


def list_versions(base: str | Path) -> list[int]:
    """The complete versions under an export base directory, ascending.

    Only all-digit directory names holding a `saved_model.pb` count (TF Serving's rule), so
    the hidden temporary directories of an export in progress are never picked up.
    """
    base = Path(base)
    if not base.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in base.iterdir()
        if is_version_name(p.name) and (p / SAVED_MODEL_FILE).is_file()
    )


def resolve_export_dir(path: str | Path) -> Path | None:
    """The version directory `path` points to: itself if it is one, else the highest version
    when it is an export base directory; None when it is not an export at all."""
    path = Path(path)
    if (path / SAVED_MODEL_FILE).is_file():
        return path
    versions = list_versions(path)
    return path / str(versions[-1]) if versions else None


def next_version(base: Path) -> int:
    """The version number a new export under `base` gets (complete or not, numbers are taken)."""
    taken = [int(p.name) for p in base.iterdir() if is_version_name(p.name)]
    return max(taken, default=0) + 1


def pick_decoder(
    decoders: Mapping[str, DecodeOptions],
    beam_size: int | None,
    n_best: int = 1,
    length_penalty: float | None = None,
    max_length_ratio: float | None = None,
) -> str:
    """The name of the decoder that serves these options.

    `beam_size` None asks for the export's default decoding (`serving_default`); a decoder
    with a longer n-best list than asked serves too (its top n are the same: beam search only
    stops once no live hypothesis can enter the list), the shortest such list winning.
    `length_penalty` and `max_length_ratio` must match when given.

    Raises:
        NoDecoderError: no decoder fits; the message says what the export has.
    """
    if not decoders:
        raise NoDecoderError("this model has no translator decoders (model_info is missing)")
    if beam_size is None:
        options = decoders.get(DEFAULT_SIGNATURE)
        if options is None:
            raise NoDecoderError(f"this export has no {DEFAULT_SIGNATURE} decoder")
        if n_best > options.n_best:
            raise NoDecoderError(f"n_best {n_best} is above {options.n_best} for this beam size")
        return DEFAULT_SIGNATURE

    def close(value: float | None, option: float) -> bool:
        return value is None or math.isclose(value, option)

    matches = [
        (options.n_best, name)
        for name, options in decoders.items()
        if options.beam_size == beam_size
        and n_best <= options.n_best
        and close(length_penalty, options.length_penalty)
        and close(max_length_ratio, options.max_length_ratio)
    ]
    if matches:
        return min(matches)[1]
    sizes = sorted({o.beam_size for o in decoders.values()})
    if beam_size not in sizes:
        raise NoDecoderError(
            f"no decoder for beam_size={beam_size}: beam_size {beam_size} is not available, "
            f"this export has {sizes} (re-export with --beam-size/--n-best for others)"
        )
    most = max(o.n_best for o in decoders.values() if o.beam_size == beam_size)
    if n_best > most:
        raise NoDecoderError(
            f"no decoder for beam_size={beam_size}, n_best={n_best}: n_best is at most {most} "
            "for this beam size (re-export with --beam-size/--n-best for others)"
        )
    available = "; ".join(
        f"length_penalty={o.length_penalty} max_length_ratio={o.max_length_ratio}"
        for o in dict.fromkeys(decoders.values())
        if o.beam_size == beam_size
    )
    raise NoDecoderError(
        f"no decoder for beam_size={beam_size}, n_best={n_best}, "
        f"length_penalty={length_penalty}, max_length_ratio={max_length_ratio}; for this beam "
        f"size it has: {available} (re-export with --beam-size/--n-best for others)"
    )

"""An export base directory's layout and the decoders an export holds; no TensorFlow.

`BASE/<version>/` in TensorFlow Serving's layout: integer versions, a version counting only
once its `saved_model.pb` is in place (an export in progress is a hidden sibling). Each export
records its decoders (decoding options baked into one signature each) in `model_info`;
`pick_decoder` is the one rule, used by the Python API and by the server, that maps a
requested beam size and n-best to one of them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

DEFAULT_SIGNATURE = "serving_default"
# An attention model's export also has this signature: text [batch] -> the greedy translation,
# its source and target pieces and the teacher-forced attention weights [batch, tgt, src].
ATTENTION_SIGNATURE = "attention"
_VERSION = re.compile(r"^[0-9]{1,18}$")


class DecodeOptions(NamedTuple):
    """Decoding options baked into one exported signature (or asked of the API)."""

    beam_size: int
    n_best: int
    length_penalty: float
    max_length_ratio: float


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
        if is_version_name(p.name) and (p / "saved_model.pb").is_file()
    )


def resolve_export_dir(path: str | Path) -> Path | None:
    """The version directory `path` points to: itself if it is one, else the highest version
    when it is an export base directory; None when it is not an export at all."""
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    versions = list_versions(path)
    return path / str(versions[-1]) if versions else None


def next_version(base: Path) -> int:
    """The version number a new export under `base` gets (complete or not, numbers are taken)."""
    taken = [int(p.name) for p in base.iterdir() if is_version_name(p.name)]
    return max(taken, default=0) + 1


def decode_function(decoder: str) -> str:
    """The name under which an export saves a decoder's full decode function (its outputs:
    translations, scores, log_probs, lengths [batch, n_best]; source_lengths [batch])."""
    return f"decode_{decoder}"


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

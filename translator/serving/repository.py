"""The loaded versions of one export base directory: loading, warming up, refreshing from disk.

TensorFlow is imported here only when a version is loaded or called, so importing the server
stays cheap. Nothing but the SavedModel itself (protobuf graph and variables) is read: no
pickle, no code.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from translator.config import load_config
from translator.errors import ConfigError
from translator.export.layout import (
    ASSETS_DIR,
    CONFIG_ASSET,
    DecodeOptions,
    decode_function,
    list_versions,
    source_sentencepiece,
)
from translator.serving.batching import Batcher
from translator.serving.rest import ApiError, SignatureSpec, plain
from translator.serving.settings import ServeSettings
from translator.splitting import Splitter
from translator.translating import CHARS_PER_PIECE, join_rows

log = logging.getLogger(__name__)


def _tensor_specs(infos) -> dict[str, tuple[str, tuple[int, ...] | None]]:
    from tensorflow.core.framework import types_pb2  # noqa: PLC0415

    specs = {}
    for key, info in infos.items():
        shape = info.tensor_shape
        dims = None if shape.unknown_rank else tuple(d.size for d in shape.dim)
        specs[key] = (types_pb2.DataType.Name(info.dtype), dims)
    return specs


@dataclass
class ServedVersion:
    """One loaded version: the SavedModel, its signatures, model_info and batchers."""

    version: int
    path: Path
    loaded: Any
    specs: dict[str, SignatureSpec]
    metadata: dict[str, Any]
    info: dict[str, Any]
    decoders: dict[str, DecodeOptions]
    batchers: dict[str, Batcher] = field(default_factory=dict)
    # Cuts a decoder's inputs into sentences (and chunks) before the model sees them; None for
    # an export without its config asset. `split` is the export's `decode.split`, the default
    # of requests that do not say.
    splitter: Splitter | None = None
    split: bool = False

    async def translate_rows(
        self, batcher: Batcher, values: list[str], split: bool | None
    ) -> list[dict[str, Any]]:
        """The output rows of a decoder's `batcher` for `values`, in order. With `split`
        (None: the export's default) each value is cut into units first, all units of the
        request go to the batcher together, and each value's rows are joined (`join_rows`)."""
        split = self.split if split is None else split
        if not split or self.splitter is None:
            return await batcher.submit(values)
        segments = self.splitter.segment(values)
        rows = await batcher.submit(segments.units)
        return [join_rows(group) for group in segments.regroup(rows)]

    def call(self, signature: str, values: list[str] | None = None) -> dict[str, np.ndarray]:
        """Runs a signature synchronously (in the calling thread)."""
        import tensorflow as tf  # noqa: PLC0415

        spec = self.specs[signature]
        kwargs = {}
        if values is not None:
            kwargs[next(iter(spec.inputs))] = tf.constant(values, tf.string)
        out = self.loaded.signatures[signature](**kwargs)
        return {k: v.numpy() for k, v in out.items()}

    def decode(self, decoder: str, values: list[str]) -> dict[str, np.ndarray]:
        """Runs a decoder's full decode function synchronously: translations, scores,
        log_probs and lengths [batch, n_best], source_lengths [batch]."""
        import tensorflow as tf  # noqa: PLC0415

        out = getattr(self.loaded, decode_function(decoder))(tf.constant(values, tf.string))
        return {k: v.numpy() for k, v in out.items()}

    def has_decode_function(self, decoder: str) -> bool:
        """Whether the export saved `decoder`'s decode function (every export of this package
        does; a SavedModel from elsewhere may have the signature only)."""
        return hasattr(self.loaded, decode_function(decoder))

    def batcher(self, signature: str, settings: ServeSettings) -> Batcher:
        """The batcher of one signature, created on first use."""
        return self._batcher(signature, lambda values: self.call(signature, values), settings)

    def decoder_batcher(self, decoder: str, settings: ServeSettings) -> Batcher:
        """The batcher /v1/translate uses for a decoder: its decode function (whose log_probs
        and lengths give the confidence) under that function's name, else its signature."""
        if not self.has_decode_function(decoder):
            return self.batcher(decoder, settings)
        name = decode_function(decoder)
        return self._batcher(name, lambda values: self.decode(decoder, values), settings)

    def _batcher(self, key: str, run, settings: ServeSettings) -> Batcher:
        if key not in self.batchers:
            self.batchers[key] = Batcher(
                run, settings.max_batch_size, settings.max_wait_ms / 1000.0
            )
        return self.batchers[key]


def _decoders(info: dict[str, Any]) -> dict[str, DecodeOptions]:
    """The decoders model_info lists; none when it lists none or is unreadable."""
    try:
        listed = json.loads(info.get("decoders", "{}"))
        return {name: DecodeOptions(**options) for name, options in listed.items()}
    except (ValueError, TypeError, AttributeError):
        return {}


def load_version(path: Path, version: int) -> ServedVersion:
    """Loads and warms up one version directory."""
    import tensorflow as tf  # noqa: PLC0415
    import tensorflow_text  # noqa: F401, PLC0415  (registers the SentencePiece ops)
    from google.protobuf import json_format  # noqa: PLC0415
    from tensorflow.core.protobuf import saved_model_pb2  # noqa: PLC0415

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((path / "saved_model.pb").read_bytes())
    signature_defs = {
        name: sig
        for name, sig in proto.meta_graphs[0].signature_def.items()
        if not name.startswith("__")
    }
    specs = {
        name: SignatureSpec(name, _tensor_specs(sig.inputs), _tensor_specs(sig.outputs))
        for name, sig in signature_defs.items()
    }
    metadata = {
        name: json_format.MessageToDict(sig, preserving_proto_field_name=True)
        for name, sig in signature_defs.items()
    }
    loaded = tf.saved_model.load(str(path))
    served = ServedVersion(version, path, loaded, specs, metadata, {}, {})
    if "model_info" in specs and not specs["model_info"].inputs:
        served.info = {k: plain(v) for k, v in served.call("model_info").items()}
        served.decoders = _decoders(served.info)
    served.splitter, served.split = _splitter(path)
    for name, spec in specs.items():  # the first call of a function is slow: pay it now
        if spec.batched_text:
            served.call(name, ["warm up"])
    for name in served.decoders:
        if served.has_decode_function(name):
            served.decode(name, ["warm up"])
    return served


def _splitter(path: Path) -> tuple[Splitter | None, bool]:
    """The splitter of a version (from its config and source SentencePiece assets) and its
    `decode.split`; (None, False) without a readable config asset."""
    config_path = path / ASSETS_DIR / CONFIG_ASSET
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        log.warning("%s: inputs are not split into sentences (%s)", path, exc)
        return None, False
    limit = config.decode.max_source_length
    splitter = Splitter(
        config.data.source_lang,
        limit,
        source_sentencepiece(path),
        max_word_chars=CHARS_PER_PIECE * limit,
    )
    return splitter, config.decode.split


class ModelRepository:
    """The versions of one export base directory, refreshed from disk."""

    def __init__(self, base: str | Path, name: str, keep_versions: int = 1):
        self.base = Path(base)
        self.name = name
        self.keep_versions = keep_versions
        self._versions: dict[int, ServedVersion] = {}
        self._failed: dict[int, float] = {}  # version -> mtime of the saved_model.pb that failed
        self._lock = threading.Lock()

    @property
    def versions(self) -> dict[int, ServedVersion]:
        """The loaded versions by number."""
        return self._versions  # replaced as a whole, never mutated: safe to read anywhere

    def get(self, version: int | None) -> ServedVersion:
        """The given loaded version, or the highest one for None; ApiError 404 if absent."""
        versions = self._versions
        if version is None:
            if not versions:
                raise ApiError(404, f"Servable not found for request: Latest({self.name})")
            return versions[max(versions)]
        if version not in versions:
            raise ApiError(404, f"Servable not found for request: Specific({self.name}, {version})")
        return versions[version]

    def refresh(self) -> list[int]:
        """Loads the newest versions on disk and drops older ones; returns newly loaded ones.

        A version that fails to load is skipped (and logged) until its files change, and the
        versions already loaded stay served.
        """
        with self._lock:
            current = dict(self._versions)
            wanted, loaded = [], []
            for version, path, mtime in self._candidates():
                if len(wanted) == self.keep_versions:
                    break
                if version not in current:
                    try:
                        current[version] = load_version(path, version)
                        loaded.append(version)
                        log.info("loaded %s version %d from %s", self.name, version, path)
                    except Exception as exc:  # any broken export must not stop the server
                        log.error("cannot load %s: %s", path, exc)
                        self._failed[version] = mtime
                        continue
                wanted.append(version)
            if wanted:
                self._versions = {v: current[v] for v in sorted(wanted)}
            return loaded

    def _candidates(self) -> list[tuple[int, Path, float]]:
        """(version, path, mtime) of the versions on disk worth loading, newest first.

        Skipped: versions symlinked out of the base directory, and versions that failed to
        load whose saved_model.pb has not changed since.
        """
        root = self.base.resolve()
        candidates = []
        for version in reversed(list_versions(self.base)):
            path = self.base / str(version)
            if root not in path.resolve().parents:  # a symlink out of the model directory
                continue
            mtime = (path / "saved_model.pb").stat().st_mtime
            if self._failed.get(version) == mtime:
                continue
            candidates.append((version, path, mtime))
        return candidates

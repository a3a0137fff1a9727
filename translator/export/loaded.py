"""A SavedModel export behind the Python API: `ExportedTranslator`.

`Translator.load(export_dir)` returns one. It translates with the functions baked into the
export (`decode_<signature>`, the same translate functions the API builds from a Keras model),
so only the decoding options of one of its decoders can be asked (`layout.pick_decoder`). It
holds the loaded SavedModel, not a Keras model or tokenizers.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import tensorflow as tf

from translator.config import Config, load_config
from translator.errors import ModelDirError
from translator.export.layout import (
    ASSETS_DIR,
    CONFIG_ASSET,
    INFO_SIGNATURE,
    decode_function,
    load_decoders,
    pick_decoder,
    resolve_export_dir,
    source_sentencepiece,
)
from translator.translating import BaseTranslator, TranslateFunction

log = logging.getLogger(__name__)


class ExportedTranslator(BaseTranslator):
    """A loaded export with the `translate()` of every translator.

    Attributes:
        config: the training configuration saved with the export (its `decode` defaults).
        loaded: the object `tf.saved_model.load` returned.
        info: the `model_info` signature's values (languages, fingerprints, steps, decoders).
        directory: the version directory.
        decoders: signature name -> `DecodeOptions`, the decodings this export can run.
    """

    log = log  # translate()'s truncation warnings are logged as translator.export.loaded

    def __init__(self, loaded: Any, config: Config, info: dict, directory: Path):
        super().__init__(config)
        self.loaded = loaded
        self.info = info
        self.directory = directory
        self.decoders = load_decoders(info["decoders"])

    @classmethod
    def load(cls, directory: str | Path, checkpoint: str = "best") -> ExportedTranslator:
        """Loads an export version directory or the highest version of an export base dir.

        `checkpoint` is accepted for `Translator.load`'s signature and ignored.

        Raises:
            ModelDirError: `directory` is not an export, or the export cannot be loaded.
        """
        import tensorflow_text  # noqa: F401, PLC0415  (registers the SentencePiece ops)

        version_dir = resolve_export_dir(directory)
        if version_dir is None:
            raise ModelDirError(f"{directory} is not a SavedModel export")
        config_path = version_dir / ASSETS_DIR / CONFIG_ASSET
        if not config_path.is_file():
            raise ModelDirError(f"export {version_dir} has no {ASSETS_DIR}/{CONFIG_ASSET}")
        config = load_config(config_path)
        try:
            loaded = tf.saved_model.load(str(version_dir))
            info = {
                k: v.numpy().decode("utf-8") if v.dtype == tf.string else v.numpy().item()
                for k, v in loaded.signatures[INFO_SIGNATURE]().items()
            }
        except (tf.errors.OpError, KeyError, OSError, ValueError) as exc:
            raise ModelDirError(f"cannot load export {version_dir}: {exc}") from None
        return cls(loaded, config, info, version_dir)

    @property
    def precision(self) -> str:
        """ "bfloat16" or "float32": what the export computes in (exports written before
        exports recorded it are float32)."""
        return str(self.info.get("precision", "float32"))

    def source_sentencepiece(self) -> bytes | None:
        """The source SentencePiece model from the export's assets (None without it: over-long
        sentences are then truncated in the graph, not chunked)."""
        return source_sentencepiece(self.directory)

    def translate_function(
        self, beam_size: int, n_best: int, length_penalty: float, max_length_ratio: float
    ) -> TranslateFunction:
        """The exported function for these options (`layout.pick_decoder`); top-n of a longer
        n-best list is the same as asking for n."""
        try:
            name = pick_decoder(self.decoders, beam_size, n_best, length_penalty, max_length_ratio)
        except ValueError as exc:
            raise ValueError(f"export {self.directory}: {exc}") from None
        fn = getattr(self.loaded, decode_function(name))
        if n_best == self.decoders[name].n_best:
            return fn
        return lambda text: {
            k: v if k == "source_lengths" else v[:, :n_best] for k, v in fn(text).items()
        }

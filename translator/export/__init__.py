"""SavedModel export: string in, string out, tokenization inside the graph, versioned, atomic.

`layout` (version directories, the names inside an export, decoder choice) imports no
TensorFlow, so the server can use it before a model is loaded. `writer` writes an export
(`export_model`), `parity` is the gate an export passes before it is published, `loaded` is an
export behind the Python API (`ExportedTranslator`); they are imported on first use.
"""

from __future__ import annotations

from translator.errors import ExportError
from translator.export.layout import (
    CONFIG_ASSET,
    INFO_ASSET,
    DecodeOptions,
    list_versions,
    pick_decoder,
    resolve_export_dir,
)

_LAZY = {
    "export_model": "translator.export.writer",
    "INPUT_NAME": "translator.export.writer",
    "DEFAULT_BEAM_SIZE": "translator.export.writer",
    "reload_in_subprocess": "translator.export.parity",
    "PARITY_SENTENCES": "translator.export.parity",
    "BLEU_TOLERANCE": "translator.export.parity",
    "ExportedTranslator": "translator.export.loaded",
}


def __getattr__(name: str):
    # The writer, the parity gate and the loaded export pull in TensorFlow: import on first use.
    if name in _LAZY:
        import importlib  # noqa: PLC0415

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'translator.export' has no attribute {name!r}")


__all__ = [
    "CONFIG_ASSET",
    "INFO_ASSET",
    "DecodeOptions",
    "ExportError",
    "list_versions",
    "pick_decoder",
    "resolve_export_dir",
    *_LAZY,
]

"""SavedModel export: string in, string out, tokenization inside the graph, versioned, atomic.

`layout` (version directories, decoder choice) imports no TensorFlow, so the server can use it
before a model is loaded; the rest is imported on first use.
"""

from __future__ import annotations

from translator.export.layout import (
    DecodeOptions,
    list_versions,
    pick_decoder,
    resolve_export_dir,
)

_LAZY = {
    "export_model": "translator.export.writer",
    "ExportError": "translator.export.writer",
    "ExportedTranslator": "translator.export.writer",
    "reload_in_subprocess": "translator.export.writer",
    "INPUT_NAME": "translator.export.writer",
    "DEFAULT_BEAM_SIZE": "translator.export.writer",
    "PARITY_SENTENCES": "translator.export.writer",
    "CONFIG_ASSET": "translator.export.writer",
    "INFO_ASSET": "translator.export.writer",
}


def __getattr__(name: str):
    # The writer and the loaded export pull in TensorFlow: import them on first use.
    if name in _LAZY:
        import importlib  # noqa: PLC0415

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'translator.export' has no attribute {name!r}")


__all__ = [
    "DecodeOptions",
    "list_versions",
    "pick_decoder",
    "resolve_export_dir",
    *_LAZY,
]

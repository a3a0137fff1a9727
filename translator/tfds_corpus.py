"""TFDS translation datasets as corpora: the builder (prepared, offline-aware), a split as
`tf.data`, and a split read in blocks for the validation pass.

TFDS is imported only when a TFDS corpus is used.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import tensorflow as tf

from translator.corpus_files import Block
from translator.errors import DataError

# TFDS first tries its GCS mirror for catalog datasets; Multi30k comes from GitHub.
_CATALOG_HOST = "storage.googleapis.com"
_MULTI30K_HOST = "raw.githubusercontent.com"
_BLOCK = 1024  # examples per block of the validation pass


def load_builder(
    name: str,
    source_lang: str,
    target_lang: str,
    manual_dir: str | None = None,
    data_dir: str | None = None,
):
    """The prepared TFDS builder of a translation dataset that has both languages.

    Args:
        name: "multi30k/de-en" (either language order), "multi30k", or a catalog name such as
            "ted_hrlr_translate/pt_to_en"; the features must be a `tfds.features.Translation`.
        source_lang: Language code of the sources.
        target_lang: Language code of the targets.
        manual_dir: Directory with the raw files, for offline machines.
        data_dir: TFDS data directory; None means the TFDS default.

    Raises:
        DataError: unknown dataset or language, offline without `manual_dir`, failed download.
    """
    import tensorflow_datasets as tfds

    import translator.datasets.multi30k  # noqa: F401  (registers the builder)

    name = builder_name(name, source_lang, target_lang)
    builder = _make_builder(tfds, name, data_dir)
    if not isinstance(builder.info.features, tfds.features.Translation):
        raise DataError(f"TFDS dataset '{name}' does not have a Translation feature")
    languages = builder.info.features.languages
    for lang in (source_lang, target_lang):
        if lang not in languages:
            raise DataError(
                f"language '{lang}' is not in TFDS dataset '{name}' "
                f"(languages: {', '.join(languages)})"
            )
    if not builder.is_prepared():
        _prepare(tfds, builder, name, manual_dir, data_dir)
    return builder


def split_dataset(
    builder, name: str, split: str, source_lang: str, target_lang: str
) -> tf.data.Dataset:
    """A split's (source, target) raw string pairs in the prepared order, as `tf.data`.

    Raises:
        DataError: the dataset has no such split (slices like "train[:1%]" work).
    """
    try:
        dataset = builder.as_dataset(split=split, shuffle_files=False)
    except Exception as exc:  # TFDS raises assorted types for a bad split
        known = ", ".join(builder.info.splits) or "none"
        raise DataError(f"TFDS dataset '{name}' has no split '{split}' (splits: {known})") from exc
    return dataset.map(lambda example: (example[source_lang], example[target_lang]))


def example_blocks(pairs: tf.data.Dataset, name: str) -> Iterator[Block]:
    """Blocks of decoded (source, target) strings of a split's pairs.

    Raises:
        DataError: an example is not UTF-8 (named by its 1-based number).
    """
    number = 0
    for sources, targets in pairs.batch(_BLOCK).as_numpy_iterator():
        block: Block = ([], [])
        for src, tgt in zip(sources, targets, strict=True):
            number += 1
            block[0].append(_decode(src, name, number))
            block[1].append(_decode(tgt, name, number))
        yield block


def _decode(value: bytes, name: str, number: int) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{name}: example {number}: invalid UTF-8 ({exc.reason})") from None


def builder_name(name: str, source_lang: str, target_lang: str) -> str:
    """Maps "multi30k", "multi30k/en-de" etc. to the alphabetical Multi30k config name."""
    base, _, config = name.partition("/")
    if base != "multi30k":
        return name
    config, colon, version = config.partition(":")
    langs = config.split("-") if config else [source_lang, target_lang]
    if len(langs) != 2:
        raise DataError(f"TFDS dataset '{name}': expected a config like multi30k/de-en")
    return f"multi30k/{'-'.join(sorted(langs))}{colon}{version}"


def _make_builder(tfds, name: str, data_dir: str | None):
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"unknown TFDS dataset '{name}'") from None
    except Exception as exc:  # e.g. an unknown config: TFDS says which ones exist
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"TFDS dataset '{name}': {first}") from None


def _host_reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """True if a TCP connection to `host` opens within `timeout` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _prepare(tfds, builder, name: str, manual_dir: str | None, data_dir: str | None) -> None:
    """Runs download_and_prepare, failing fast (not after minutes of retries) when offline."""
    is_multi30k = name.startswith("multi30k/")
    if manual_dir is not None:
        path = Path(manual_dir)
        if not path.is_dir() or not any(path.iterdir()):
            raise DataError(f"data.manual_dir is missing or empty: {manual_dir}")
        advice = f"check the raw files in data.manual_dir ({manual_dir})"
    else:
        advice = (
            "download the raw files elsewhere, copy them to a directory and set data.manual_dir, "
            "or set data.data_dir to a directory where the dataset is already prepared"
        )
        if is_multi30k:
            advice += " (multi30k: {train,val,test_2016_flickr}.{lang}.gz)"
        host = _MULTI30K_HOST if is_multi30k else _CATALOG_HOST
        if not _host_reachable(host):
            where = data_dir or "the default TFDS data_dir"
            raise DataError(
                f"TFDS dataset '{name}' is not prepared in {where} and this machine appears "
                f"offline (cannot reach {host}): {advice}"
            )
    # The GCS mirror only has catalog datasets, and probing it offline is what retries for minutes.
    config = tfds.download.DownloadConfig(
        manual_dir=manual_dir, try_download_gcs=manual_dir is None and not is_multi30k
    )
    try:
        builder.download_and_prepare(download_config=config)
    except DataError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DataError(
            f"could not prepare TFDS dataset '{name}': {type(exc).__name__}: {first}; {advice}"
        ) from exc

"""Parallel corpus readers: two aligned files, one TSV file, or a TFDS translation dataset.

Every reader returns a `ParallelCorpus` of normalised string pairs. Normalisation, applied the
same way to files and to TFDS examples:

1. Bytes are decoded as strict UTF-8; an invalid byte is an error naming the file and 1-based line.
2. A UTF-8 byte-order mark at the very start of a file is dropped.
3. Lines are split on ``\\n`` only (never on the other characters `str.splitlines` knows, which
   would silently misalign files); the terminator ``\\n`` or ``\\r\\n`` (or a final ``\\r``) is
   removed.
4. Control characters (C0, DEL, C1, including tab, NUL and stray ``\\r``) and the Unicode line and
   paragraph separators are replaced by a space; runs of spaces are collapsed to one; surrounding
   whitespace is stripped. Other characters (no-break spaces, zero-width joiners) are kept.
5. A pair whose source or target is empty after that is skipped and counted in `skipped_empty`.

Line N of the source is always paired with line N of the target: files with different line
counts are rejected (both files are counted fully first), never truncated. Gzip files are
detected by their magic bytes, whatever their name. Errors are `DataError`s in one line.
"""

from __future__ import annotations

import gzip
import itertools
import re
import socket
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from translator.config import DataConfig
from translator.errors import DataError

_GZIP_MAGIC = b"\x1f\x8b"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SPACES = re.compile(r" {2,}")
_SPLITS = ("train", "valid", "test")
# TFDS first tries its GCS mirror for catalog datasets; Multi30k comes from GitHub.
_CATALOG_HOST = "storage.googleapis.com"
_MULTI30K_HOST = "raw.githubusercontent.com"


@dataclass(frozen=True)
class ParallelCorpus:
    """Aligned sentence pairs and where they came from.

    Attributes:
        sources: Normalised source sentences, none empty.
        targets: Normalised target sentences, aligned with `sources`.
        skipped_empty: Pairs dropped because either side was empty or whitespace-only.
        origin: Human-readable description, e.g. "train.de.gz + train.en.gz".
    """

    sources: list[str]
    targets: list[str]
    skipped_empty: int
    origin: str

    def __len__(self) -> int:
        return len(self.sources)


def normalise(text: str) -> str:
    """Replaces control characters by spaces, collapses runs of spaces and strips the ends."""
    return _SPACES.sub(" ", _CONTROL.sub(" ", text)).strip()


def read_parallel(source: str | Path, target: str | Path | None = None) -> ParallelCorpus:
    """Reads two aligned files, or one TSV file ("source<TAB>target") when `target` is None.

    In a TSV file a blank line counts as an empty pair (skipped); any other line must hold exactly
    one tab.

    Raises:
        DataError: a file is missing, not gzip though it claims to be, not UTF-8, a TSV line has no
            or several tabs, the line counts differ, or no pair is left.
    """
    if target is None:
        _check_file(source)
        pairs = _tsv_pairs(source)
        origin = str(source)
    else:
        _check_file(source)
        _check_file(target)
        pairs = _file_pairs(source, target)
        origin = f"{source} + {target}"
    return _collect(pairs, origin)


def load_corpus(data: DataConfig, split: str) -> ParallelCorpus:
    """Loads split "train", "valid" or "test" as configured in `data`.

    Plain files (`data.<split>.source`, plus `.target` unless the source is a TSV file) win over
    `data.tfds`; relative paths are relative to the working directory.

    Raises:
        DataError: neither files nor a TFDS dataset are configured, or reading fails.
    """
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(_SPLITS)}")
    files = getattr(data, split)
    if files.source:
        return read_parallel(files.source, files.target)
    if files.target:
        raise DataError(f"data.{split}.target is set but data.{split}.source is not")
    if data.tfds:
        return load_tfds_pairs(
            data.tfds,
            getattr(data, f"{split}_split"),
            data.source_lang,
            data.target_lang,
            manual_dir=data.manual_dir,
            data_dir=data.data_dir,
        )
    raise DataError(
        f"no data for split '{split}': set data.{split}.source/data.{split}.target or data.tfds"
    )


def load_tfds_pairs(
    name: str,
    split: str,
    source_lang: str,
    target_lang: str,
    manual_dir: str | None = None,
    data_dir: str | None = None,
) -> ParallelCorpus:
    """Prepares (if needed) and reads a TFDS translation dataset in the requested direction.

    Args:
        name: "multi30k/de-en" (either language order), "multi30k", or a catalog name such as
            "ted_hrlr_translate/pt_to_en"; the features must be a `tfds.features.Translation`.
        split: TFDS split, e.g. "train", "validation", "test" (slices like "train[:1%]" work).
        source_lang: Language code of the sources.
        target_lang: Language code of the targets.
        manual_dir: Directory with the raw files, for offline machines.
        data_dir: TFDS data directory; None means the TFDS default.

    Raises:
        DataError: unknown dataset or language, offline without `manual_dir`, failed download.
    """
    import tensorflow_datasets as tfds

    import translator.datasets.multi30k  # noqa: F401  (registers the builder)

    name = _builder_name(name, source_lang, target_lang)
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
    try:
        dataset = builder.as_dataset(split=split).batch(1024)
    except Exception as exc:  # TFDS raises assorted types for a bad split
        known = ", ".join(builder.info.splits) or "none"
        raise DataError(f"TFDS dataset '{name}' has no split '{split}' (splits: {known})") from exc
    origin = f"tfds {name}:{split}"

    def pairs() -> Iterator[tuple[str, str]]:
        number = 0
        for batch in tfds.as_numpy(dataset):
            for src, tgt in zip(batch[source_lang], batch[target_lang], strict=True):
                number += 1
                yield _decode_example(src, origin, number), _decode_example(tgt, origin, number)

    return _collect(pairs(), origin)


def _check_file(path: str | Path) -> None:
    path = Path(path)
    if not path.exists():
        raise DataError(f"corpus file not found: {path}")
    if not path.is_file():
        raise DataError(f"corpus path is not a file: {path}")


def _lines(path: str | Path) -> Iterator[str]:
    """Yields the decoded lines of a plain or gzip file, BOM and line terminator removed."""
    compressed = False
    number = 0
    try:
        with open(path, "rb") as handle:  # inside the try: an unreadable file is a DataError
            compressed = handle.read(2) == _GZIP_MAGIC
        with gzip.open(path, "rb") if compressed else open(path, "rb") as handle:
            # Binary iteration splits on b"\n" only, the one separator every tool agrees on.
            for number, raw in enumerate(handle, start=1):
                if raw.endswith(b"\n"):
                    raw = raw[:-1]
                if raw.endswith(b"\r"):
                    raw = raw[:-1]
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(
                        f"{path}: line {number}: invalid UTF-8 ({exc.reason} at byte {exc.start})"
                    ) from None
                if number == 1 and text.startswith("\ufeff"):
                    text = text[1:]
                yield text
    except (OSError, EOFError, zlib.error) as exc:
        where = f"after line {number}" if number else "before line 1"
        if compressed:
            raise DataError(f"corrupt gzip file: {path} ({where}: {exc})") from None
        raise DataError(f"cannot read corpus file {path} ({where}): {exc}") from None


def _file_pairs(source: str | Path, target: str | Path) -> Iterator[tuple[str, str]]:
    end = object()
    counts = [0, 0]
    for src, tgt in itertools.zip_longest(_lines(source), _lines(target), fillvalue=end):
        counts[0] += src is not end
        counts[1] += tgt is not end
        if src is not end and tgt is not end:
            yield src, tgt
    if counts[0] != counts[1]:
        raise DataError(
            f"line counts differ: {source} has {counts[0]} lines, {target} has {counts[1]} lines"
        )


def _tsv_pairs(path: str | Path) -> Iterator[tuple[str, str]]:
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            yield "", ""
            continue
        tabs = line.count("\t")
        if tabs != 1:
            raise DataError(
                f"{path}: line {number}: expected exactly one tab between source and target, "
                f"found {tabs}"
            )
        src, tgt = line.split("\t")
        yield src, tgt


def _collect(pairs: Iterable[tuple[str, str]], origin: str) -> ParallelCorpus:
    sources: list[str] = []
    targets: list[str] = []
    skipped = 0
    for src, tgt in pairs:
        src, tgt = normalise(src), normalise(tgt)
        if src and tgt:
            sources.append(src)
            targets.append(tgt)
        else:
            skipped += 1
    if not sources:
        raise DataError(f"no sentence pairs in {origin} ({skipped} skipped with an empty side)")
    return ParallelCorpus(sources, targets, skipped, origin)


def _decode_example(value: bytes, origin: str, number: int) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{origin}: example {number}: invalid UTF-8 ({exc.reason})") from None


def _builder_name(name: str, source_lang: str, target_lang: str) -> str:
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

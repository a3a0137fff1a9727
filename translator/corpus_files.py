"""Plain corpus files: read in blocks of lines, validated, normalised (no TensorFlow).

The bottom of the data path: `translator.data` (training and evaluation corpora) and the
Multi30k TFDS builder both read files through this module. Normalisation, applied the same way
to files and to TFDS examples (and, in the training stream, in-graph by `translator.data`):

1. Bytes are decoded as strict UTF-8; an invalid byte is an error naming the file and 1-based line.
2. A UTF-8 byte-order mark at the very start of a file is dropped.
3. Lines are split on ``\\n`` only (never on the other characters `str.splitlines` knows, which
   would silently misalign files); the terminator ``\\n`` or ``\\r\\n`` (or a final ``\\r``) is
   removed.
4. Control characters (C0, DEL, C1, including tab, NUL and stray ``\\r``) and the Unicode line and
   paragraph separators are replaced by a space; runs of spaces are collapsed to one; surrounding
   whitespace is stripped. Other characters (no-break spaces, zero-width joiners) are kept.
5. A pair whose source or target is empty after that is skipped and counted.

Line N of the source is always paired with line N of the target: files with different line
counts are rejected (both files are counted fully first), never truncated. Gzip files are
detected by their magic bytes, whatever their name. Files are read in blocks of about a
megabyte, so memory does not grow with the file. Errors are `DataError`s in one line.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from translator.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
BLOCK_BYTES = 1 << 18
# Code points replaced by a space (rule 4), as inclusive ranges: C0, DEL + C1, U+2028/U+2029.
CONTROL_RANGES = ((0x00, 0x1F), (0x7F, 0x9F), (0x2028, 0x2029))
# What `str.strip()` removes besides those: the other characters `str.isspace()` is true for.
OTHER_WHITESPACE = ((0x20, 0x20), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A))
OTHER_WHITESPACE += ((0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000))


def char_class(ranges: Iterable[tuple[int, int]], re2: bool = False) -> str:
    """A regex character class of inclusive code point ranges, for Python's `re` or for RE2
    (TensorFlow's `tf.strings.regex_replace`)."""
    point = "\\x{{{:x}}}" if re2 else "\\U{:08x}"
    return "[" + "".join(f"{point.format(a)}-{point.format(b)}" for a, b in ranges) + "]"


_CONTROL = re.compile(char_class(CONTROL_RANGES))
_SPACES = re.compile(r" {2,}")
_BLANK = re.compile(char_class(CONTROL_RANGES + OTHER_WHITESPACE) + "*").fullmatch


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


# A block of aligned pairs: raw (not yet normalised) sources and targets of equal length.
Block = tuple[list[str], list[str]]


def normalise(text: str) -> str:
    """Replaces control characters by spaces, collapses runs of spaces and strips the ends."""
    return _SPACES.sub(" ", _CONTROL.sub(" ", text)).strip()


def is_blank(text: str) -> bool:
    """Whether `normalise(text)` is empty (faster than normalising)."""
    return _BLANK(text) is not None


def is_gzip(path: str | Path) -> bool:
    """Whether the file starts with the gzip magic bytes (its name does not matter)."""
    with open(path, "rb") as handle:
        return handle.read(2) == GZIP_MAGIC


def check_file(path: str | Path) -> None:
    """Raises DataError unless `path` is an existing file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"corpus file not found: {path}")
    if not path.is_file():
        raise DataError(f"corpus path is not a file: {path}")


def origin(source: str | Path, target: str | Path | None) -> str:
    """How a corpus of two files (or one TSV file) is named in messages."""
    return str(source) if target is None else f"{source} + {target}"


def line_blocks(path: str | Path, block_bytes: int = BLOCK_BYTES) -> Iterator[list[str]]:
    """Yields the decoded lines of a plain or gzip file in blocks (BOM and terminators removed).

    Raises:
        DataError: the file is unreadable, a corrupt gzip file, or not UTF-8 (file and line).
    """
    compressed = False
    number = 0  # lines yielded so far
    try:
        compressed = is_gzip(path)  # inside the try: an unreadable file is a DataError
        with gzip.open(path, "rb") if compressed else open(path, "rb") as handle:
            pending: list[bytes] = []  # the start of a line longer than a block
            while chunk := handle.read(block_bytes):
                end = chunk.rfind(b"\n")
                if end < 0:
                    pending.append(chunk)
                    continue
                body = b"".join([*pending, chunk[: end + 1]]) if pending else chunk[: end + 1]
                pending = [chunk[end + 1 :]]
                del chunk
                lines = _decode(body, path, number)
                del body
                number += len(lines)
                yield lines
            last = b"".join(pending)
            if last:
                yield _decode(last[:-1] if last.endswith(b"\r") else last, path, number)
    except (OSError, EOFError, zlib.error) as exc:
        where = f"after line {number}" if number else "before line 1"
        if compressed:
            raise _error(f"corrupt gzip file: {path} ({where}: {exc})", number + 1) from None
        raise _error(f"cannot read corpus file {path} ({where}): {exc}", number + 1) from None


def _error(message: str, line: int) -> DataError:
    """A DataError that knows the 1-based line it was found at (`line`), for lockstep order."""
    error = DataError(message)
    error.line = line
    return error


def _decode(body: bytes, path: str | Path, before: int) -> list[str]:
    """The lines of `body` (whole lines, each ending with b"\\n" but maybe the last), decoded;
    `before` lines precede them."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        # Name the first bad line as reading it alone would: 1-based, byte offset in the line.
        start = body.rfind(b"\n", 0, exc.start) + 1
        stop = body.find(b"\n", exc.start)
        raw = body[start : len(body) if stop < 0 else stop].removesuffix(b"\r")
        number = before + body.count(b"\n", 0, exc.start) + 1
        try:
            raw.decode("utf-8")
            reason, offset = exc.reason, exc.start - start
        except UnicodeDecodeError as line_exc:
            reason, offset = line_exc.reason, line_exc.start
        message = f"{path}: line {number}: invalid UTF-8 ({reason} at byte {offset})"
        raise _error(message, number) from None
    if before == 0 and text.startswith("\ufeff"):
        text = text[1:]
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    return lines


def file_pair_blocks(source: str | Path, target: str | Path) -> Iterator[Block]:
    """Aligned blocks of raw lines of two files.

    Raises:
        DataError: as `line_blocks`: the first error reading the files line by line in
            lockstep (source line k, then target line k) would meet; or, after the last block,
            the line counts differ (both files counted to their end).
    """
    readers = [line_blocks(source), line_blocks(target)]
    blocks: list[list[str] | None] = [[], []]
    used = [0, 0]  # lines of the current block already paired
    read = [0, 0]  # lines decoded so far
    while True:
        for side in (0, 1):
            if blocks[side] is not None and used[side] == len(blocks[side]):
                blocks[side], used[side] = _next_block(readers, side, read), 0
        if blocks[0] is None or blocks[1] is None:
            break
        n = min(len(blocks[0]) - used[0], len(blocks[1]) - used[1])
        yield blocks[0][used[0] : used[0] + n], blocks[1][used[1] : used[1] + n]
        used = [used[0] + n, used[1] + n]
    for side in (0, 1):  # the longer file is read (and validated) to its end
        while blocks[side] is not None:
            blocks[side] = _next_block(readers, side, read)
    if read[0] != read[1]:
        raise DataError(
            f"line counts differ: {source} has {read[0]} lines, {target} has {read[1]} lines"
        )


def _next_block(readers: list[Iterator[list[str]]], side: int, read: list[int]):
    """The next block of file `side` (None at its end), counted in `read`. An error found in
    it is raised only if reading in lockstep would have met it before any in the other file."""
    try:
        block = next(readers[side], None)
    except DataError as error:
        other = 1 - side
        # Lockstep order: source line k comes before target line k.
        first = (error.line, side)
        try:
            while read[other] < error.line - (other > side):
                block = next(readers[other], None)
                if block is None:
                    break
                read[other] += len(block)
        except DataError as other_error:
            if (other_error.line, other) < first:
                raise other_error from None
        raise error from None
    if block is not None:
        read[side] += len(block)
    return block


def tsv_pair_blocks(path: str | Path) -> Iterator[Block]:
    """Blocks of (source, target) of a TSV file: one tab per line; a blank line is an empty pair.

    Raises:
        DataError: as `line_blocks`; a non-blank line has no tab or several (file and line).
    """
    number = 0
    for lines in line_blocks(path):
        sources, targets = [], []
        for line in lines:
            number += 1
            parts = line.split("\t")
            if len(parts) != 2:
                if line.strip():
                    raise DataError(
                        f"{path}: line {number}: expected exactly one tab between source and "
                        f"target, found {len(parts) - 1}"
                    )
                parts = ("", "")
            sources.append(parts[0])
            targets.append(parts[1])
        yield sources, targets


def pair_blocks(source: str | Path, target: str | Path | None = None) -> Iterator[Block]:
    """Blocks of raw pairs of two aligned files, or of one TSV file when `target` is None.

    The files are checked to exist before the first block is read.
    """
    check_file(source)
    if target is None:
        return tsv_pair_blocks(source)
    check_file(target)
    return file_pair_blocks(source, target)


def collect(blocks: Iterable[Block], name: str) -> ParallelCorpus:
    """Normalises every pair of `blocks` and keeps those with both sides non-empty, in memory.

    Raises:
        DataError: no pair is left.
    """
    sources: list[str] = []
    targets: list[str] = []
    skipped = 0
    for block in blocks:
        for src, tgt in zip(*block, strict=True):
            src, tgt = normalise(src), normalise(tgt)
            if src and tgt:
                sources.append(src)
                targets.append(tgt)
            else:
                skipped += 1
    if not sources:
        raise DataError(f"no sentence pairs in {name} ({skipped} skipped with an empty side)")
    return ParallelCorpus(sources, targets, skipped, name)


def read_parallel(source: str | Path, target: str | Path | None = None) -> ParallelCorpus:
    """Reads two aligned files, or one TSV file ("source<TAB>target") when `target` is None,
    into memory (for evaluation sets and small corpora; training streams, see data.py).

    In a TSV file a blank line counts as an empty pair (skipped); any other line must hold exactly
    one tab.

    Raises:
        DataError: a file is missing, not gzip though it claims to be, not UTF-8, a TSV line has no
            or several tabs, the line counts differ, or no pair is left.
    """
    return collect(pair_blocks(source, target), origin(source, target))

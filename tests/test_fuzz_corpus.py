"""Property-based tests of `data.read_parallel` (and of the training stream, which must agree
with it) on hostile corpus files.

Whatever bytes a corpus holds (random bytes, any Unicode: combining marks, right-to-left text,
emoji, NUL and other control characters, byte-order marks, CRLF line endings, very long lines),
`read_parallel` either returns aligned pairs normalised as the `translator.data` docstring says,
or raises a `DataError` naming the file (and the line, for a bad line). It never raises anything
else and never pairs line i of one side with another line of the other side: every generated
line carries a unique marker `<i>`, which must come out on the same row on both sides.
"""

from __future__ import annotations

import gzip
import re
import tempfile
from pathlib import Path

import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from translator.config import DataConfig, SplitConfig
from translator.corpus_files import line_blocks
from translator.data import normalise, normalise_strings, read_parallel, scan_corpus, text_batches
from translator.errors import DataError

# Characters that break naive readers: controls (NUL, CR, VT, FF, ESC, DEL, NEL, C1), bidi
# controls, Unicode line/paragraph separators, zero-width characters, BOM, combining marks,
# right-to-left scripts, emoji sequences and the highest code point.
SPECIAL = [
    *"\x00\x01\x08\t\r\x0b\x0c\x1b\x1c\x1f\x7f\x80\x85\x9f\xa0\xad",
    *"\u200b\u200c\u200d\u200e\u200f\u202a\u202e\u2066\u2069\u2028\u2029\u3000\ufeff\ufffd",
    *"\u0301\u0308\u0651\u064b\u20dd",  # combining marks
    *"\u05d0\u05e9\u0627\u0644\u06cc",  # Hebrew, Arabic
    "\U0001f600",
    "\U0001f469\u200d\U0001f469\u200d\U0001f467",
    "\U0001f1e9\U0001f1ea",
    "\U0010ffff",
    "e\u0301",
    "\r\r",
    "  ",
]
# Characters that `normalise` turns into nothing: a line made only of them is an empty side.
BLANK = list(" \t\r\x00\x01\x0b\x0c\x1f\x7f\x85\x9f\xa0\u2003\u2028\u2029\u3000")
# Everything but the line separator and the marker delimiters.
NOISE_CHAR = st.one_of(
    st.sampled_from(SPECIAL), st.characters(codec="utf-8", exclude_characters="\n<>")
)
NOISE = st.lists(NOISE_CHAR, max_size=16).map("".join)
BLANK_TEXT = st.lists(st.sampled_from(BLANK), max_size=6).map("".join)
MARKER = re.compile(r"<(\d+)>")
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory(prefix="fuzz_corpus_") as directory:
        yield Path(directory)


def write(path: Path, raw: bytes, compress: bool) -> Path:
    path.write_bytes(gzip.compress(raw, mtime=0) if compress else raw)
    return path


@st.composite
def side(draw, n: int, marked: list[bool]) -> tuple[bytes, bool]:
    """One file of `n` lines (line i marked `<i>` when marked[i], else blank) as bytes, with
    random line endings, an optional BOM and an optional final newline; and whether to gzip."""
    lines = []
    for i in range(n):
        if marked[i]:
            lines.append(draw(NOISE) + f"<{i}>" + draw(NOISE))
        else:
            lines.append(draw(BLANK_TEXT))
    endings = draw(st.lists(st.sampled_from(["\n", "\r\n"]), min_size=n, max_size=n))
    text = "".join(line + end for line, end in zip(lines, endings, strict=True))
    # No newline after the last line, unless what is left of it would be empty (then there
    # would be no last line): a trailing CR goes with a removed LF, as it would read as CRLF.
    cr_goes = lines[-1].endswith("\r") and endings[-1] == "\n"
    if lines[-1][: -1 if cr_goes else None] and draw(st.booleans()):
        text = text[: -len(endings[-1])]
        if cr_goes:
            text = text[:-1]
    if draw(st.booleans()):
        text = "\ufeff" + text
    return text.encode("utf-8"), draw(st.booleans())


@st.composite
def aligned_corpus(draw):
    n = draw(st.integers(1, 20))
    src_marked = draw(st.lists(st.booleans(), min_size=n, max_size=n).map(_mostly_true))
    tgt_marked = draw(st.lists(st.booleans(), min_size=n, max_size=n).map(_mostly_true))
    src = draw(side(n, src_marked))
    tgt = draw(side(n, tgt_marked))
    return n, src_marked, tgt_marked, src, tgt


def _mostly_true(flags: list[bool]) -> list[bool]:
    # Two thirds marked: plenty of kept pairs, some skipped ones, and all-blank corpora are rare.
    return [f or i % 3 != 0 for i, f in enumerate(flags)]


def markers(texts: list[str]) -> list[int]:
    found = [MARKER.findall(t) for t in texts]
    assert all(len(f) == 1 for f in found), found
    return [int(f[0]) for f in found]


def assert_normalised(texts: list[str]) -> None:
    for text in texts:
        assert text and text == text.strip(), repr(text)
        assert "  " not in text and not CONTROL.search(text), repr(text)


@SETTINGS
@given(aligned_corpus())
def test_unicode_corpora_stay_aligned_and_counts_add_up(workdir, corpus):
    n, src_marked, tgt_marked, (src_raw, src_gz), (tgt_raw, tgt_gz) = corpus
    src = write(workdir / "uni.src", src_raw, src_gz)
    tgt = write(workdir / "uni.tgt", tgt_raw, tgt_gz)
    kept = [i for i in range(n) if src_marked[i] and tgt_marked[i]]
    if not kept:
        with pytest.raises(DataError, match="no sentence pairs"):
            read_parallel(src, tgt)
        return
    result = read_parallel(src, tgt)
    assert markers(result.sources) == kept
    assert markers(result.targets) == kept
    assert len(result) + result.skipped_empty == n
    assert_normalised(result.sources + result.targets)


@SETTINGS
@given(aligned_corpus())
def test_tsv_corpora_stay_aligned(workdir, corpus):
    n, src_marked, tgt_marked, (src_raw, _), (tgt_raw, compress) = corpus
    # Same random content, as "source<TAB>target" lines (tabs are column separators here, so the
    # noise must not hold any).
    src_lines = src_raw.decode("utf-8").removeprefix("\ufeff").split("\n")
    tgt_lines = tgt_raw.decode("utf-8").removeprefix("\ufeff").split("\n")
    rows = [
        s.removesuffix("\r").replace("\t", " ") + "\t" + t.removesuffix("\r").replace("\t", " ")
        for s, t in zip(src_lines[:n], tgt_lines[:n], strict=False)
    ]
    path = write(workdir / "uni.tsv", ("\ufeff" + "\r\n".join(rows)).encode("utf-8"), compress)
    kept = [i for i in range(n) if src_marked[i] and tgt_marked[i]]
    if not kept:
        with pytest.raises(DataError, match="no sentence pairs"):
            read_parallel(path)
        return
    result = read_parallel(path)
    assert markers(result.sources) == kept == markers(result.targets)
    assert len(result) + result.skipped_empty == n
    assert_normalised(result.sources + result.targets)


@st.composite
def tsv_with_bad_tabs(draw):
    n = draw(st.integers(1, 20))
    rows = []
    for i in range(n):
        columns = [draw(NOISE.map(lambda s: s.replace("\t", " "))) for _ in range(2)]
        columns = [columns[0] + f"<{i}>", f"<{i}>" + columns[1]]
        tabs = draw(st.sampled_from([1, 1, 1, 0, 2, 3]))
        sep = "\t" * tabs if tabs else " "
        rows.append(columns[0] + sep + columns[1])
    return rows


@SETTINGS
@given(tsv_with_bad_tabs())
def test_tsv_lines_without_exactly_one_tab_are_named(workdir, rows):
    path = write(workdir / "tabs.tsv", "\n".join(rows).encode("utf-8"), False)
    bad = [i for i, row in enumerate(rows) if row.count("\t") != 1]
    if not bad:
        assert markers(read_parallel(path).sources) == list(range(len(rows)))
        return
    with pytest.raises(DataError) as info:
        read_parallel(path)
    first = bad[0]
    message = str(info.value)
    assert f"{path}: line {first + 1}:" in message
    assert f"found {rows[first].count(chr(9))}" in message


@st.composite
def byte_lines(draw, n: int) -> list[bytes]:
    """Lines of random bytes around the marker `<i>`: often not UTF-8 at all."""
    noise = st.binary(max_size=12).map(lambda b: bytes(c for c in b if c not in b"\n<>"))
    return [draw(noise) + b"<%d>" % i + draw(noise) for i in range(n)]


def first_bad_line(lines: list[bytes]) -> int | None:
    """1-based number of the first line that is not UTF-8 (the oracle for the error message)."""
    for number, line in enumerate(lines, start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return number
    return None


@SETTINGS
@given(st.integers(1, 12).flatmap(lambda n: st.tuples(byte_lines(n), byte_lines(n))))
def test_random_bytes_are_accepted_aligned_or_rejected_with_file_and_line(workdir, pair):
    src_lines, tgt_lines = pair
    n = len(src_lines)
    # A leading gzip magic would make it a (corrupt) gzip file: covered by the next test.
    src_lines[0] = src_lines[0].removeprefix(b"\x1f\x8b")
    tgt_lines[0] = tgt_lines[0].removeprefix(b"\x1f\x8b")
    src = write(workdir / "bytes.src", b"\n".join(src_lines), False)
    tgt = write(workdir / "bytes.tgt", b"\r\n".join(tgt_lines) + b"\r\n", False)
    bad_src, bad_tgt = first_bad_line(src_lines), first_bad_line(tgt_lines)
    if bad_src is None and bad_tgt is None:
        result = read_parallel(src, tgt)
        assert markers(result.sources) == markers(result.targets) == list(range(n))
        assert result.skipped_empty == 0
        assert_normalised(result.sources + result.targets)
        return
    with pytest.raises(DataError) as info:
        read_parallel(src, tgt)
    # Lines are read in lockstep (source line k, then target line k): the first bad one wins.
    candidates = [(b, 0, src) for b in [bad_src] if b] + [(b, 1, tgt) for b in [bad_tgt] if b]
    number, _, path = min(candidates)
    assert f"{path}: line {number}: invalid UTF-8" in str(info.value)


@SETTINGS
@given(st.binary(max_size=200), st.sampled_from(["magic", "gzip", "truncated", "plain"]))
def test_any_bytes_never_raise_anything_but_a_data_error(workdir, payload, kind):
    """Random bytes as a source file and as a TSV file: a corpus or a DataError naming the file."""
    if kind == "magic":  # claims to be gzip, is not
        payload = b"\x1f\x8b" + payload
    elif kind == "gzip":
        payload = gzip.compress(payload, mtime=0)
    elif kind == "truncated":
        full = gzip.compress(payload, mtime=0)
        payload = full[: max(2, len(full) * 2 // 3)]
    path = workdir / "any.bin"
    path.write_bytes(payload)
    lines = payload.count(b"\n")
    target = write(workdir / "any.tgt", b"x\n" * lines + b"x", False)
    for args in ((path, target), (path,)):
        try:
            result = read_parallel(*args)
        except DataError as exc:
            assert str(path) in str(exc)
            assert "\n" not in str(exc)
        else:
            assert len(result) == len(result.targets)
            assert_normalised(result.sources + result.targets)


@SETTINGS
@given(st.integers(1, 15), st.integers(1, 15), st.booleans())
def test_different_line_counts_are_rejected_never_truncated(workdir, n_src, n_tgt, final_eol):
    src_text = "".join(f"s<{i}>\n" for i in range(n_src))
    tgt_text = "".join(f"t<{i}>\n" for i in range(n_tgt))
    if not final_eol:
        src_text, tgt_text = src_text[:-1], tgt_text[:-1]
    src = write(workdir / "count.src", src_text.encode(), False)
    tgt = write(workdir / "count.tgt", tgt_text.encode(), True)
    if n_src == n_tgt:
        assert len(read_parallel(src, tgt)) == n_src
        return
    with pytest.raises(DataError) as info:
        read_parallel(src, tgt)
    message = str(info.value)
    assert f"{src} has {n_src} lines" in message and f"{tgt} has {n_tgt} lines" in message


@pytest.mark.parametrize("compress", [False, True])
def test_very_long_lines_are_read_whole_and_aligned(tmp_path, compress):
    long_line = "ein " * 500_000 + "\u05e9\u0651\u200f" * 1000  # ~2 MB
    src_lines = ["<0>", f"<1> {long_line}<1>", "<2>", "<3>" + "\x00" * 100_000]
    tgt_lines = [f"<0> {long_line}", "<1>", "\r" * 100_000, "<3>"]
    src = write(tmp_path / "long.src", "\r\n".join(src_lines).encode(), compress)
    tgt = write(tmp_path / "long.tgt", "\n".join(tgt_lines).encode(), compress)
    result = read_parallel(src, tgt)
    assert [MARKER.findall(s)[0] for s in result.sources] == ["0", "1", "3"]
    assert [MARKER.findall(t)[0] for t in result.targets] == ["0", "1", "3"]
    assert result.skipped_empty == 1
    assert result.sources[1].endswith("\u200f<1>") and len(result.sources[1]) > 2_000_000
    assert result.sources[2] == "<3>"


def test_unreadable_corpus_is_a_data_error(tmp_path, monkeypatch):
    directory = tmp_path / "dir.src"
    directory.mkdir()
    with pytest.raises(DataError, match="not a file"):
        read_parallel(directory, directory)
    locked = tmp_path / "locked.src"
    locked.write_text("a\n")
    real_open = open

    def deny(file, *args, **kwargs):  # chmod 0 does not stop root, so refuse here
        if Path(file) == locked:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", deny)
    with pytest.raises(DataError, match=f"{re.escape(str(locked))}.*Permission denied"):
        read_parallel(locked, locked)


@settings(SETTINGS, max_examples=40)
@given(aligned_corpus())
def test_the_training_stream_and_scan_agree_with_read_parallel(workdir, corpus):
    """The same files streamed through tf.data (normalised in-graph) give the pairs
    `read_parallel` gives, in order; the streaming pass counts them and the empty ones alike."""
    n, src_marked, tgt_marked, (src_raw, src_gz), (tgt_raw, tgt_gz) = corpus
    if not any(s and t for s, t in zip(src_marked, tgt_marked, strict=True)):
        return  # no pair at all: covered above
    src = write(workdir / "stream.src", src_raw, src_gz)
    tgt = write(workdir / "stream.tgt", tgt_raw, tgt_gz)
    expected = read_parallel(src, tgt)
    files = DataConfig(train=SplitConfig(source=str(src), target=str(tgt)))
    streamed: tuple[list[str], list[str]] = ([], [])
    for sources, targets in text_batches(files, "train"):
        streamed[0].extend(s.decode() for s in sources.numpy())
        streamed[1].extend(t.decode() for t in targets.numpy())
    assert streamed == (expected.sources, expected.targets)
    found = scan_corpus(files, "train", sample_size=n)
    assert (found.pairs, found.skipped_empty) == (len(expected), expected.skipped_empty)
    assert found.sample == expected


@SETTINGS
@given(st.lists(st.one_of(NOISE, BLANK_TEXT), min_size=1, max_size=8))
def test_in_graph_normalisation_is_normalise(texts):
    graph = normalise_strings(tf.constant(texts)).numpy()
    assert [t.decode() for t in graph] == [normalise(t) for t in texts]


@SETTINGS
@given(aligned_corpus(), st.integers(1, 9))
def test_block_boundaries_do_not_change_the_lines(workdir, corpus, block_bytes):
    """Blocks of a few bytes split lines, CRLFs, BOMs and multi-byte characters anywhere."""
    _, _, _, (raw, compress), _ = corpus
    path = write(workdir / "blocks.src", raw, compress)
    whole = [line for block in line_blocks(path) for line in block]
    small = [line for block in line_blocks(path, block_bytes) for line in block]
    assert small == whole
    # The oracle: BOM dropped, split on LF only, one CR before each LF (and a final one) dropped.
    text = raw.decode("utf-8").removeprefix("\ufeff")
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    assert whole == [line.removesuffix("\r") for line in lines]

"""Tests for translator.data and the Multi30k TFDS builder (offline, tiny files only)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from translator import tfds_corpus
from translator.config import DataConfig, SplitConfig
from translator.data import ParallelCorpus, load_corpus, load_tfds_pairs, read_parallel
from translator.errors import DataError

DATA = Path(__file__).parent / "data"
TOY_DE = (DATA / "toy.de").read_text(encoding="utf-8").splitlines()
TOY_EN = (DATA / "toy.en").read_text(encoding="utf-8").splitlines()


def write(path: Path, payload: bytes | str, compress: bool = False) -> Path:
    raw = payload.encode("utf-8") if isinstance(payload, str) else payload
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


# --- plain, gzip and TSV files ---------------------------------------------------------------


def test_read_two_plain_files():
    corpus = read_parallel(DATA / "toy.de", DATA / "toy.en")
    assert isinstance(corpus, ParallelCorpus)
    assert len(corpus) == 12
    assert corpus.sources == TOY_DE and corpus.targets == TOY_EN
    assert corpus.sources[0] == "Ein Hund läuft über die Wiese."
    assert corpus.targets[11] == "An old man is feeding the ducks."
    assert corpus.skipped_empty == 0
    assert "toy.de" in corpus.origin and "toy.en" in corpus.origin


def test_gzip_detected_by_magic_bytes_not_extension(tmp_path):
    # Compressed files without .gz, and a plain file that claims to be .gz.
    src = write(tmp_path / "a.de", (DATA / "toy.de").read_bytes(), compress=True)
    tgt = write(tmp_path / "a.en.gz", (DATA / "toy.en").read_bytes())
    corpus = read_parallel(src, tgt)
    assert corpus.sources == TOY_DE and corpus.targets == TOY_EN


def test_read_tsv_matches_two_files():
    corpus = read_parallel(DATA / "toy.de-en.tsv")
    assert corpus.sources == TOY_DE and corpus.targets == TOY_EN
    assert corpus.origin.endswith("toy.de-en.tsv")


def test_bom_crlf_and_control_characters_are_normalised(tmp_path):
    src = write(tmp_path / "s.de", b"\xef\xbb\xbfHallo Welt\r\n  Guten\tTag\x00 ! \r\nEnde\r")
    tgt = write(tmp_path / "s.en", "\ufeffHello world\nGood   day!\nEnd")
    corpus = read_parallel(src, tgt)
    assert corpus.sources == ["Hallo Welt", "Guten Tag !", "Ende"]
    assert corpus.targets == ["Hello world", "Good day!", "End"]


def test_only_newline_splits_lines(tmp_path):
    # \x0b, \x0c and U+2028 are line breaks to str.splitlines but must not shift alignment.
    src = write(tmp_path / "s.de", "eins\x0bzwei\nvier\u2028fünf\n")
    tgt = write(tmp_path / "s.en", "one\x0ctwo\nfour\n")
    corpus = read_parallel(src, tgt)
    assert corpus.sources == ["eins zwei", "vier fünf"]
    assert corpus.targets == ["one two", "four"]


def test_empty_pairs_are_skipped_and_counted_keeping_alignment(tmp_path):
    src = write(tmp_path / "e.de", "eins\n\ndrei\nvier\n \t \nsechs\n")
    tgt = write(tmp_path / "e.en", "one\ntwo\nthree\n   \nfive\nsix\n")
    corpus = read_parallel(src, tgt)
    assert list(zip(corpus.sources, corpus.targets, strict=True)) == [
        ("eins", "one"),
        ("drei", "three"),
        ("sechs", "six"),
    ]
    assert corpus.skipped_empty == 3


def test_tsv_blank_lines_and_empty_sides_are_skipped(tmp_path):
    tsv = write(tmp_path / "p.tsv", "a\tA\n\n\tB\nc\t\nd\tD\n")
    corpus = read_parallel(tsv)
    assert (corpus.sources, corpus.targets, corpus.skipped_empty) == (["a", "d"], ["A", "D"], 3)


# --- errors -------------------------------------------------------------------------------------


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope.en"
    with pytest.raises(DataError, match=r"corpus file not found: .*nope\.en"):
        read_parallel(DATA / "toy.de", missing)


def test_line_count_mismatch_names_both_files_and_full_counts(tmp_path):
    src = write(tmp_path / "a.de", "".join(f"satz {i}\n" for i in range(12)))
    tgt = write(tmp_path / "a.en", "".join(f"sentence {i}\n" for i in range(11)), compress=True)
    with pytest.raises(DataError) as info:
        read_parallel(src, tgt)
    message = str(info.value)
    assert "a.de has 12 lines" in message and "a.en has 11 lines" in message
    assert "\n" not in message


def test_line_count_mismatch_counts_the_longer_target_fully(tmp_path):
    src = write(tmp_path / "b.de", "x\n")
    tgt = write(tmp_path / "b.en", "x\ny\nz\nw\n")
    with pytest.raises(DataError, match=r"b\.de has 1 lines, .*b\.en has 4 lines"):
        read_parallel(src, tgt)


def test_invalid_utf8_names_file_and_line(tmp_path):
    src = write(tmp_path / "u.de", b"gut\nauch gut\nkaputt \xff\xfe\n")
    tgt = write(tmp_path / "u.en", "good\nalso good\nbroken\n")
    with pytest.raises(DataError, match=r"u\.de: line 3: invalid UTF-8"):
        read_parallel(src, tgt)


def test_invalid_utf8_in_gzip_names_line(tmp_path):
    src = write(tmp_path / "g.de.gz", b"\xc3\x28\n", compress=True)
    with pytest.raises(DataError, match=r"g\.de\.gz: line 1: invalid UTF-8"):
        read_parallel(src, DATA / "toy.en")


@pytest.mark.parametrize(("line", "tabs"), [("no tab here", 0), ("a\tb\tc", 2)])
def test_tsv_line_without_exactly_one_tab(tmp_path, line, tabs):
    tsv = write(tmp_path / "bad.tsv", f"a\tA\nb\tB\n{line}\n")
    with pytest.raises(DataError, match=rf"bad\.tsv: line 3: .*one tab.*found {tabs}"):
        read_parallel(tsv)


def test_empty_corpus_names_origin(tmp_path):
    src = write(tmp_path / "z.de", "\n  \nnur deutsch\n")
    tgt = write(tmp_path / "z.en", "only english\n\n\n")
    with pytest.raises(DataError, match=r"no sentence pairs in .*z\.de \+ .*z\.en \(3 skipped"):
        read_parallel(src, tgt)


def test_empty_files_are_an_empty_corpus(tmp_path):
    with pytest.raises(DataError, match=r"no sentence pairs in .*e\.tsv"):
        read_parallel(write(tmp_path / "e.tsv", b""))


@pytest.mark.parametrize(
    "payload",
    [
        b"\x1f\x8bthis is not deflate data at all",
        gzip.compress(b"ein langer Satz\n" * 50)[:-20],  # truncated
    ],
    ids=["garbage", "truncated"],
)
def test_corrupt_gzip_names_file(tmp_path, payload):
    bad = write(tmp_path / "bad.de.gz", payload)
    with pytest.raises(DataError, match=r"corrupt gzip file: .*bad\.de\.gz"):
        read_parallel(bad, DATA / "toy.en")


# --- load_corpus from files ---------------------------------------------------------------------


def test_load_corpus_uses_split_files_relative_to_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "v.de", "hallo\n")
    write(tmp_path / "v.en", "hello\n")
    write(tmp_path / "t.tsv", "tschüss\tbye\n")
    cfg = DataConfig(
        tfds="multi30k/de-en",  # files win over TFDS
        valid=SplitConfig(source="v.de", target="v.en"),
        test=SplitConfig(source="t.tsv"),
    )
    valid = load_corpus(cfg, "valid")
    assert (valid.sources, valid.targets, valid.origin) == (["hallo"], ["hello"], "v.de + v.en")
    assert load_corpus(cfg, "test").targets == ["bye"]


def test_load_corpus_without_data_names_the_keys():
    cfg = DataConfig(train=SplitConfig(source="x.de", target="x.en"))
    with pytest.raises(
        DataError, match=r"no data for split 'valid'.*data\.valid\.source.*data\.tfds"
    ):
        load_corpus(cfg, "valid")


# --- TFDS: the Multi30k builder offline, and catalog datasets -----------------------------------

M30K = {
    "train": (
        ["Ein Hund.", "Zwei Katzen.", "", "Drei Vögel."],
        ["A dog.", "Two cats.", "x", "Three birds."],
    ),
    "val": (["Ein Baum.", "Ein Haus."], ["A tree.", "A house."]),
    "test_2016_flickr": (["Ein Boot.", "Ein Auto.", "Ein Zug."], ["A boat.", "A car.", "A train."]),
}


@pytest.fixture(scope="module")
def multi30k_dirs(tmp_path_factory) -> tuple[str, str]:
    """A tiny manual_dir with Multi30k-named gz files, and a data_dir to prepare into."""
    manual = tmp_path_factory.mktemp("manual")
    for stem, (german, english) in M30K.items():
        write(manual / f"{stem}.de.gz", "".join(f"{s}\n" for s in german), compress=True)
        write(manual / f"{stem}.en.gz", "".join(f"{s}\n" for s in english), compress=True)
    return str(manual), str(tmp_path_factory.mktemp("tfds"))


def test_multi30k_prepared_offline_from_manual_dir(multi30k_dirs, monkeypatch):
    manual, data_dir = multi30k_dirs
    monkeypatch.setattr(tfds_corpus, "_host_reachable", _no_network)
    cfg = DataConfig(tfds="multi30k/de-en", manual_dir=manual, data_dir=data_dir)
    train = load_corpus(cfg, "train")
    assert list(zip(train.sources, train.targets, strict=True)) == [
        ("Ein Hund.", "A dog."),
        ("Zwei Katzen.", "Two cats."),
        ("Drei Vögel.", "Three birds."),
    ]
    assert train.origin == "tfds multi30k/de-en:train"
    assert load_corpus(cfg, "valid").sources == ["Ein Baum.", "Ein Haus."]
    test = load_corpus(cfg, "test")
    assert (test.sources, test.targets) == M30K["test_2016_flickr"]


def test_multi30k_reverse_direction(multi30k_dirs, monkeypatch):
    manual, data_dir = multi30k_dirs
    monkeypatch.setattr(tfds_corpus, "_host_reachable", _no_network)
    cfg = DataConfig(
        tfds="multi30k/en-de",
        source_lang="en",
        target_lang="de",
        manual_dir=manual,
        data_dir=data_dir,
    )
    test = load_corpus(cfg, "test")
    assert (test.sources, test.targets) == M30K["test_2016_flickr"][::-1]


def test_multi30k_unknown_language_lists_languages(multi30k_dirs):
    with pytest.raises(DataError, match=r"language 'fr' is not in .*multi30k/de-en.*de, en"):
        load_tfds_pairs("multi30k/de-en", "train", "fr", "en", data_dir=multi30k_dirs[1])


def test_multi30k_mismatched_manual_files(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    for stem in M30K:
        write(manual / f"{stem}.en.gz", "a\nb\n", compress=True)
        write(manual / f"{stem}.fr.gz", "a\nb\nc\n" if stem == "val" else "a\nb\n", compress=True)
    with pytest.raises(DataError, match=r"val\.en\.gz has 2 lines, .*val\.fr\.gz has 3 lines"):
        load_tfds_pairs("multi30k/fr-en", "train", "fr", "en", str(manual), str(tmp_path / "tfds"))


def test_unknown_tfds_dataset_is_named(tmp_path):
    with pytest.raises(DataError, match=r"unknown TFDS dataset 'no_such_corpus_xyz'"):
        load_tfds_pairs("no_such_corpus_xyz", "train", "de", "en", data_dir=str(tmp_path))


def _no_network(*args, **kwargs) -> bool:
    return False


def _must_not_download(*args, **kwargs):
    # pytest.fail is a BaseException, so no `except Exception` in the code under test hides it.
    pytest.fail("download_and_prepare must not run: it would reach the network")


def test_catalog_dataset_offline_fails_fast(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(tfds_corpus, "_host_reachable", _no_network)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", _must_not_download)
    with pytest.raises(DataError) as info:
        load_tfds_pairs("ted_hrlr_translate/pt_to_en", "train", "pt", "en", data_dir=str(tmp_path))
    message = str(info.value)
    assert "ted_hrlr_translate/pt_to_en" in message and "offline" in message
    assert "data.manual_dir" in message and "data.data_dir" in message


def test_catalog_download_failure_is_a_data_error(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    def fail(*args, **kwargs):
        raise ConnectionError("connection reset by peer")

    monkeypatch.setattr(tfds_corpus, "_host_reachable", lambda *a, **k: True)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", fail)
    with pytest.raises(DataError, match=r"ted_hrlr_translate.*connection reset.*data\.manual_dir"):
        load_tfds_pairs("ted_hrlr_translate/pt_to_en", "train", "pt", "en", data_dir=str(tmp_path))

"""TFDS builder for Multi30k task 1 (image-caption translation between en, de, fr and cs).

Importing this module registers the builder as `multi30k`, with one config per unordered language
pair named in alphabetical order ("de-en", "cs-fr", ...). Splits: train (29,000 lines), validation
(1,014) and test (test_2016_flickr, 1,000).

Offline use: put the raw files (`train.de.gz`, `val.de.gz`, `test_2016_flickr.de.gz`, ... as in
the upstream repository; plain uncompressed files work too) in a directory and pass it as
`tfds.download.DownloadConfig(manual_dir=...)`; the network is then never touched.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import tensorflow_datasets as tfds

from translator.corpus_files import normalise, origin, pair_blocks
from translator.corpus_scan import scan
from translator.errors import DataError

LANGUAGES = ("cs", "de", "en", "fr")
_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/{stem}.{lang}.gz"
_SPLIT_STEMS = {"train": "train", "validation": "val", "test": "test_2016_flickr"}

_CITATION = """\
@inproceedings{elliott-etal-2016-multi30k,
    title = "{M}ulti30{K}: Multilingual {E}nglish-{G}erman Image Descriptions",
    author = "Elliott, Desmond and Frank, Stella and Sima'an, Khalil and Specia, Lucia",
    booktitle = "Proceedings of the 5th Workshop on Vision and Language",
    year = "2016",
    pages = "70--74",
}
"""


class Multi30k(tfds.core.GeneratorBasedBuilder):
    """Multi30k task 1 sentence pairs, read from the upstream raw files or a manual_dir."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: task 1 raw files, test = test_2016_flickr."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name=f"{a}-{b}", description=f"Multi30k task 1, {a} and {b}.")
        for a, b in itertools.combinations(LANGUAGES, 2)
    ]
    DEFAULT_CONFIG_NAME = "de-en"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Optional (for offline machines): put {train,val,test_2016_flickr}.{LANG}.gz for both
    languages of the config, from github.com/multi30k/dataset data/task1/raw, in manual_dir.
    """

    @property
    def languages(self) -> tuple[str, str]:
        """The config's two language codes, alphabetical."""
        first, second = self.builder_config.name.split("-")
        return first, second

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="Multi30k task 1: Flickr30k image captions translated by professionals.",
            features=tfds.features.Translation(languages=self.languages),
            supervised_keys=self.languages,
            homepage="https://github.com/multi30k/dataset",
            citation=_CITATION,
            # File order is kept, so a prepared test split lines up with the raw reference files.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        names = [f"{stem}.{lang}" for stem in _SPLIT_STEMS.values() for lang in self.languages]
        manual = _manual_dir(dl_manager)
        if manual is not None:
            paths = {name: _manual_file(manual, name) for name in names}
        else:
            urls = {}
            for name in names:
                stem, lang = name.rsplit(".", 1)
                urls[name] = _URL.format(stem=stem, lang=lang)
            paths = dl_manager.download(urls)
        first, second = self.languages
        generators = {}
        for split, stem in _SPLIT_STEMS.items():
            files = paths[f"{stem}.{first}"], paths[f"{stem}.{second}"]
            # Validate whole files first (one streaming pass) so a bad file fails before
            # anything is written.
            scan(pair_blocks(*files), origin(*files), size=0)
            generators[split] = self._generate_examples(*files)
        return generators

    def _generate_examples(self, first_file, second_file):
        """The normalised pairs with both sides non-empty, numbered from 0, read in blocks."""
        first, second = self.languages
        index = 0
        for block in pair_blocks(first_file, second_file):
            for a, b in zip(*block, strict=True):
                a, b = normalise(a), normalise(b)
                if a and b:
                    yield index, {first: a, second: b}
                    index += 1


def _manual_dir(dl_manager: tfds.download.DownloadManager) -> Path | None:
    """The manual_dir if one was given and holds files; None means download."""
    try:
        return Path(dl_manager.manual_dir)
    except AssertionError:  # TFDS's way of saying "not given" or "missing/empty"
        return None


def _manual_file(manual: Path, name: str) -> Path:
    for candidate in (manual / f"{name}.gz", manual / name):
        if candidate.is_file():
            return candidate
    raise DataError(f"multi30k: {name}.gz not found in manual_dir {manual}")

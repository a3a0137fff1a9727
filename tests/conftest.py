"""Shared fixtures: tiny corpora written by the tests, tiny configs, one tiny trained model."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Under pytest-xdist (a worker per core), one intra-op and one inter-op thread per TensorFlow
# process, this one's and the subprocesses' its tests start: TensorFlow's own pools (a thread
# per core each) would put several busy threads on each core (README, "Tests").
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import synthetic  # noqa: E402

from translator.config import Config, config_from_dict  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_files(tmp_path_factory) -> dict[str, Path]:
    """Synthetic task files: train (2,000 pairs), valid (100), test (200), disjoint."""
    root = tmp_path_factory.mktemp("synthetic")
    train, rest = synthetic.split(2000, 300, seed=0)
    files = {}
    for name, pairs in (("train", train), ("valid", rest[:100]), ("test", rest[100:])):
        files[f"{name}.src"], files[f"{name}.tgt"] = root / f"{name}.src", root / f"{name}.tgt"
        synthetic.write_pairs(pairs, files[f"{name}.src"], files[f"{name}.tgt"])
    return files


def tiny_config(files: dict[str, Path], output_dir: Path, overrides: tuple = ()) -> Config:
    """A tiny, fast model on the synthetic task (hidden 64, word-level vocabulary)."""
    values = {
        "data": {
            "train": {"source": str(files["train.src"]), "target": str(files["train.tgt"])},
            "valid": {"source": str(files["valid.src"]), "target": str(files["valid.tgt"])},
            "test": {"source": str(files["test.src"]), "target": str(files["test.tgt"])},
            "source_lang": "xx",
            "target_lang": "en",
            "max_length": 40,
        },
        "tokenizer": {"vocab_size": 200},
        "model": {"embedding_dim": 64, "units": 64},
        "train": {
            "batch_size": 32,
            "max_steps": 60,
            "epochs": 0,
            "learning_rate": 0.01,
            "log_every": 10,
            "checkpoint_every": 20,
            "seed": 7,
            "eval_bleu_sentences": 50,
            "mixed_precision": False,  # the same numerics on every machine kind
        },
        "decode": {"max_length": 64},
        "output_dir": str(output_dir),
    }
    return config_from_dict(values, overrides)


def _shared(tmp_path_factory, name: str, build) -> Path:
    """`build(path)` run once per test session, under pytest-xdist once for all workers.

    The first worker to get here builds it (holding a file lock) and the others wait for it,
    instead of each building its own. Tests only read what it built.
    """
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the directory all workers' base temp dirs are in
    out, done = root / name / "out", root / name / "done"
    with FileLock(root / f"{name}.lock"):
        if not done.is_file():
            build(out)
            done.touch()
    return out


@pytest.fixture(scope="session")
def trained_dir(synthetic_files, tmp_path_factory) -> Path:
    """A tiny model trained for a few hundred steps: good enough to translate the task well."""
    from translator.train import train

    def build(out: Path) -> None:
        # synthetic_files are the same on every worker (fixed seed): any worker's will do.
        # Keras's LSTM loop: the trajectory test_train's threshold (90% of held-out sentences exact)
        # was set on, at 10 epochs; 11 since the loss runs TensorFlow's fused cross-entropy kernel
        # (same loss, other rounding: 0.875 exact after 10 epochs). The fast loop has the same
        # gradients within float32 rounding (test_lstm.py), but rounding alone moves a 10-epoch run:
        # over seeds 7-10, keras matched 1.0/0.72/1.0/0.99 of the test sentences and fast
        # 0.62/0.995/1.0/0.98.
        overrides = ("train.max_steps=0", "train.epochs=11", "model.lstm=keras")
        config = tiny_config(synthetic_files, out, overrides)
        train(config, progress=False)

    return _shared(tmp_path_factory, "trained", build)


@pytest.fixture(scope="session")
def tiny_export(trained_dir, tmp_path_factory) -> Path:
    """The export base directory `.../tiny` of `trained_dir` (version 1), exported once."""
    from translator.export import export_model

    def build(out: Path) -> None:
        # float32: the same numerics on every machine kind (bfloat16 has its own tests)
        export_model(trained_dir, out / "tiny", parity_sentences=16, precision="float32")

    return _shared(tmp_path_factory, "exported", build) / "tiny"


@pytest.fixture(scope="session")
def attention_dir(synthetic_files, tmp_path_factory) -> Path:
    """A tiny Luong-attention model, trained one epoch (64 steps; ~30 s): it translates the
    task badly, but its attention and export paths are the real ones."""
    from translator.train import train

    def build(out: Path) -> None:
        overrides = ("model.attention=luong", "train.max_steps=64")
        train(tiny_config(synthetic_files, out, overrides), progress=False)

    return _shared(tmp_path_factory, "attention", build)


@pytest.fixture(scope="session")
def attention_export(attention_dir, tmp_path_factory) -> Path:
    """The export base directory `.../attn` of `attention_dir` (version 1), exported once."""
    from translator.export import export_model

    def build(out: Path) -> None:
        export_model(attention_dir, out / "attn", parity_sentences=8, precision="float32")

    return _shared(tmp_path_factory, "attention_exported", build) / "attn"


# Files in the order they run, longest first (measured), the rest after them. Under
# pytest-xdist (whole files per worker, two each to start with, then one at a time) one worker
# starts on test_api.py, which trains the shared `trained_dir` model, while the other takes the
# longest files that do not need that model, instead of waiting for it.
FIRST = (
    "test_api.py",
    "test_notebooks.py",
    "test_train_faults.py",
    "test_distribute.py",
    "test_serving.py",
    "test_fuzz_server.py",
    "test_train.py",
    "test_export.py",
    "test_page.py",
    "test_soak.py",
    "test_cli.py",
    "test_checkpoints.py",
    "test_speed_options.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        name = item.path.name
        return FIRST.index(name) if name in FIRST else len(FIRST)

    items.sort(key=rank)  # stable: the order within files and among the others stays

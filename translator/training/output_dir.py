"""Where a run writes: the chief's output directory, checked before anything is written, and
a scratch directory for the other workers' checkpoints (saving can involve collectives, so
every worker saves; only the chief's are kept)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from translator.config import Config, dump_config, load_config
from translator.errors import ConfigError
from translator.model_dir import CONFIG_FILE


def prepare_output_dir(config: Config) -> None:
    """Creates `config.output_dir`, checks it is writable and holds no other model, and
    writes the configuration there.

    Raises:
        ConfigError: the directory is not writable, or it holds a model trained with a
            different `model` or `tokenizer` section.
    """
    out = Path(config.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"output_dir {out} is not writable: {exc.strerror}") from None
    previous = out / CONFIG_FILE
    if previous.is_file():
        old = load_config(previous)
        for section in ("model", "tokenizer"):
            if getattr(old, section) != getattr(config, section):
                raise ConfigError(
                    f"output_dir {out} holds a model trained with a different '{section}' "
                    "section; use a new output_dir or the original settings"
                )
    dump_config(config, previous)


@contextlib.contextmanager
def worker_scratch_dir() -> Iterator[Path]:
    """A temporary directory for a non-chief worker's checkpoints, removed at the end."""
    directory = Path(tempfile.mkdtemp(prefix="translator-worker-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)

"""benchmarks/concurrent_batches.py: W threads translating B sentences each, order kept."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import concurrent_batches  # noqa: E402


class Recorder:
    """Upper-cases its sentences after a short sleep; records each call's thread and size."""

    def __init__(self, fail_on: str | None = None):
        self.calls: list[tuple[str, int]] = []
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def translate(self, texts: list[str], beam_size: int) -> list[str]:
        assert beam_size == 3
        time.sleep(0.02)  # long enough that the other worker takes the next chunk meanwhile
        if self.fail_on in texts:
            raise RuntimeError("model failed")
        with self.lock:
            self.calls.append((threading.current_thread().name, len(texts)))
        return [t.upper() for t in texts]


def test_workers_translate_every_chunk_once_and_keep_the_order():
    sentences = [f"s{i}" for i in range(23)]
    model = Recorder()
    out = concurrent_batches.in_workers(model, sentences, workers=2, batch=5, beam=3)
    assert out == [s.upper() for s in sentences]
    assert sorted(size for _, size in model.calls) == [3, 5, 5, 5, 5]
    assert len({thread for thread, _ in model.calls}) == 2  # both workers ran chunks


def test_a_failing_call_is_raised_not_left_as_a_hole():
    with pytest.raises(RuntimeError, match="model failed"):
        concurrent_batches.in_workers(Recorder(fail_on="s7"), [f"s{i}" for i in range(12)], 2, 4, 3)


def test_layouts_parse_and_bad_ones_say_what_is_wrong():
    assert concurrent_batches.parse_layout("2x16") == (2, 16)
    for bad in ("2*16", "0x16", "x4", "2x"):
        with pytest.raises(argparse.ArgumentTypeError, match="WORKERSxBATCH"):
            concurrent_batches.parse_layout(bad)

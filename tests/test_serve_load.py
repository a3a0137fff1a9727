"""benchmarks/serve_load.py: served throughput as a fraction of in-process throughput."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import serve_load  # noqa: E402


def test_summary_gives_each_row_its_fraction_of_in_process_throughput():
    rows = [
        {"beam_size": 1, "clients": 1, "sentences_per_s": 40.0},
        {"beam_size": 1, "clients": 32, "sentences_per_s": 270.0},
        {"beam_size": 5, "clients": 32, "sentences_per_s": 52.5},
        {"beam_size": 3, "clients": 32, "sentences_per_s": 10.0},
    ]
    summary = serve_load.summarize(rows, {1: 300.0, 5: 70.0})
    assert [r["of_in_process"] for r in summary] == [0.133, 0.9, 0.75, None]
    assert summary[1]["clients"] == 32 and rows[1].keys() <= summary[1].keys()
    # a report read back from JSON has string keys
    assert serve_load.summarize(rows[:1], {"1": 80.0})[0]["of_in_process"] == 0.5

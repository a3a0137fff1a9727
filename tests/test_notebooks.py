"""Notebooks: committed without outputs, and run top to bottom in their small setting.

The run uses a kernel spec written here (this interpreter, whatever kernels the machine has),
TRANSLATOR_NOTEBOOK_SMALL=1 and a temporary work directory, so nothing is written into the
repository. The notebooks train on Multi30k through TFDS when `../shared/corpora/multi30k` is
beside the repository, and on the synthetic task of the tests otherwise.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = (
    "01_train_and_translate.ipynb",
    "02_inside_the_lstm.ipynb",
    "03_export_and_serve.ipynb",
)
KERNEL = "translator-notebook-tests"


def test_notebooks_are_committed_without_outputs():
    nbformat = pytest.importorskip("nbformat")
    assert sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb")) == list(NOTEBOOKS)
    for name in NOTEBOOKS:
        notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
        nbformat.validate(notebook)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [], f"{name}: strip the outputs before committing"
                assert cell.execution_count is None, f"{name}: execution counts left in"
        source = "\n".join(cell.source for cell in notebook.cells)
        assert "TRANSLATOR_NOTEBOOK_SMALL" in source, f"{name}: no small setting"


@pytest.mark.slow
def test_notebooks_run_top_to_bottom(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("ipykernel")
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "translator tests", "language": "python"})
    )
    work = tmp_path / "work"
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))  # searched first
    monkeypatch.setenv("TRANSLATOR_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("TRANSLATOR_NOTEBOOK_DIR", str(work))
    monkeypatch.delenv("TRANSLATOR_NOTEBOOK_MODEL", raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")

    seconds = {}
    for name in NOTEBOOKS:  # in order: 02 and 03 use the model 01 trains
        notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
        client = nbclient.NotebookClient(
            notebook,
            kernel_name=KERNEL,
            timeout=600,
            resources={"metadata": {"path": str(NOTEBOOK_DIR)}},  # the kernel's working dir
        )
        start = time.perf_counter()
        client.execute()  # raises CellExecutionError (with the cell and traceback) on failure
        seconds[name] = round(time.perf_counter() - start, 1)
        errors = [
            o for c in notebook.cells for o in c.get("outputs", []) if o.output_type == "error"
        ]
        assert not errors, f"{name}: {errors}"
    print(f"notebook seconds: {json.dumps(seconds)}")
    (work / "notebook_seconds.json").write_text(json.dumps(seconds, indent=1))

    history = json.loads((work / "de_en_small" / "history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 2, 3]
    figures = {path.name for path in (work / "figures").glob("*.png")}
    assert {
        "01_loss.png",
        "01_scores.png",
        "02_gates_forward.png",
        "02_gates_backward.png",
        "02_gradient_flow.png",
        "02_context_length.png",
        "02_context_first_word.png",
        "02_context_topic.png",
        "02_attention_0.png",
        "03_latency.png",
    } <= figures
    assert (work / "saved_models" / "de_en" / "1" / "saved_model.pb").is_file()

"""Training survives faults: SIGKILL at any moment, Ctrl-C / SIGTERM, a full or unwritable disk.

The kill and signal tests run real `translator train` processes (bounded by timeouts; every
process they start is killed and reaped before the test ends).
"""

from __future__ import annotations

import errno
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from translator.api import Translator
from translator.config import dump_config
from translator.errors import ConfigError, TrainingError
from translator.train import train

SMALL = ("model.units=16", "model.embedding_dim=16", "train.eval_bleu_sentences=5")
# Rounds of the three kills in the SIGKILL test (more for a longer fault run, e.g. 5 -> 15 kills).
KILL_ROUNDS = int(os.environ.get("TRANSLATOR_TEST_KILL_ROUNDS", "1"))


def _env() -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


def _train_command(config_path: Path) -> list[str]:
    return [sys.executable, "-m", "translator", "train", str(config_path), "--no-progress"]


def _step(checkpoint_path: str) -> int:
    """The step number in a checkpoint path (`.../ckpt-42` -> 42)."""
    return int(checkpoint_path.rsplit("-", 1)[1])


def _assert_checkpoints_sound(directory: Path) -> str | None:
    """The state file names only complete checkpoints; the latest one reads back fully."""
    state = tf.train.get_checkpoint_state(str(directory))
    if state is None:
        return None
    for path in state.all_model_checkpoint_paths:
        assert Path(path + ".index").is_file(), path
    reader = tf.train.load_checkpoint(state.model_checkpoint_path)
    for name in reader.get_variable_to_shape_map():
        reader.get_tensor(name)  # raises on a truncated or corrupt file
    return state.model_checkpoint_path


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120.0) -> bool:
    """SIGKILLs `proc` as soon as `ready()` is true; returns False if it exited first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            proc.kill()
            proc.wait()
            return True
        time.sleep(0.002)
    return False


@pytest.mark.slow
def test_sigkill_at_any_moment_then_rerun_finishes(synthetic_files, tmp_path):
    out = tmp_path / "run"
    max_steps = 60 + 30 * KILL_ROUNDS  # more than the killed runs reach
    config = tiny_config(
        synthetic_files,
        out,
        (
            *SMALL,
            f"train.max_steps={max_steps}",
            "train.checkpoint_every=3",
            "train.keep_checkpoints=2",
        ),
    )
    dump_config(config, tmp_path / "config.yaml")
    ckpt_dir = out / "checkpoints"
    rng = random.Random(0)

    def saving() -> bool:  # a checkpoint write is under way
        return ckpt_dir.is_dir() and any("_temp" in p.name for p in ckpt_dir.iterdir())

    def latest_step() -> int:
        state = (ckpt_dir / "checkpoint").is_file() and tf.train.get_checkpoint_state(str(ckpt_dir))
        return _step(state.model_checkpoint_path) if state else 0

    def after_progress(delay: float):
        """This run saved a checkpoint beyond the one it started from, then `delay` s passed."""
        start_step, progressed = latest_step(), []

        def ready() -> bool:
            if not progressed and latest_step() > start_step:
                progressed.append(time.monotonic())
            return bool(progressed) and time.monotonic() - progressed[0] > delay

        return ready

    kills = []
    try:
        # Each kill is a process (TensorFlow's import and tracing: most of this test's time).
        # The save is cut short in a resumed run, with earlier checkpoints to keep intact.
        for moment in ("startup", "random", "during a save") * KILL_ROUNDS:
            proc = subprocess.Popen(
                _train_command(tmp_path / "config.yaml"),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=_env(),
            )
            if moment == "startup":
                killed = _kill_when(proc, lambda: (out / "config.yaml").is_file())
            elif moment == "during a save":
                killed = _kill_when(proc, saving)
            else:
                killed = _kill_when(proc, after_progress(rng.uniform(0.0, 0.3)))
            assert killed, f"run ended before the '{moment}' kill: {proc.stderr.read()[-2000:]}"
            proc.stderr.close()
            # (moment, latest sound checkpoint, a save was cut short: usually true mid-save)
            kills.append((moment, _assert_checkpoints_sound(ckpt_dir), saving()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    steps = [_step(p) for _, p, _ in kills if p]
    assert steps == sorted(steps) and steps, kills  # progress was kept across kills
    print(f"kills survived: {len(kills)}; checkpoint after each: {steps}")

    final = subprocess.run(
        _train_command(tmp_path / "config.yaml"),
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    assert final.returncode == 0, final.stderr[-2000:]
    assert json.loads(final.stdout.splitlines()[-1])["steps"] == max_steps
    assert f"resumed from {ckpt_dir}/ckpt-" in final.stderr
    assert _assert_checkpoints_sound(ckpt_dir).endswith(f"ckpt-{max_steps}")
    assert not [p.name for p in ckpt_dir.iterdir() if "_temp" in p.name or ".tmp" in p.name]
    model = Translator.load(out, checkpoint="latest")
    assert model.translate(["da rosso hunto sieht ena blau katu"])  # restores and runs


@pytest.mark.slow
def test_sigint_and_sigterm_save_a_checkpoint_and_say_how_to_resume(synthetic_files, tmp_path):
    procs = {}
    try:
        for name in ("SIGINT", "SIGTERM"):
            out = tmp_path / name
            overrides = (*SMALL, "train.max_steps=100000", "train.checkpoint_every=5")
            dump_config(tiny_config(synthetic_files, out, overrides), tmp_path / f"{name}.yaml")
            procs[name] = subprocess.Popen(
                _train_command(tmp_path / f"{name}.yaml"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_env(),
            )
        for name, proc in procs.items():
            state = tmp_path / name / "checkpoints" / "checkpoint"
            deadline = time.monotonic() + 180
            while not state.is_file() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.send_signal(getattr(signal, name))
        results = {name: proc.communicate(timeout=120) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for name, (stdout, stderr) in results.items():
        code = 128 + getattr(signal, name)
        assert procs[name].returncode == code, stderr[-2000:]
        last = stderr.strip().splitlines()[-1]
        ckpt_dir = tmp_path / name / "checkpoints"
        step = int(last.split(" at step ")[1].split(";")[0])
        assert last == (
            f"error: interrupted by {name} at step {step}; saved {ckpt_dir}/ckpt-{step}; "
            "run the same command again to resume"
        )
        assert _assert_checkpoints_sound(ckpt_dir).endswith(f"ckpt-{step}")
        assert stdout == ""


def _latest_weights(output_dir) -> list[np.ndarray]:
    return [w.numpy() for w in Translator.load(output_dir, checkpoint="latest").model.weights]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(synthetic_files, tmp_path):
    out = tmp_path / "nan"
    train(tiny_config(synthetic_files, out, (*SMALL, "train.max_steps=20")), progress=False)
    good = _latest_weights(out)
    # Adam moves every weight by about the learning rate: 1e38 overflows float32 next step.
    overrides = (*SMALL, "train.max_steps=60", "train.learning_rate=1e38", "train.clip_norm=0")
    with pytest.raises(TrainingError, match=r"^loss became (nan|inf) at step 2[12]; stopped"):
        train(tiny_config(synthetic_files, out, overrides), progress=False)
    assert tf.train.latest_checkpoint(str(out / "checkpoints")).endswith("ckpt-20")
    for a, b in zip(_latest_weights(out), good, strict=True):
        np.testing.assert_array_equal(a, b)


def test_disk_full_during_a_save_keeps_the_earlier_checkpoints(
    synthetic_files, tmp_path, monkeypatch
):
    out = tmp_path / "full"
    train(tiny_config(synthetic_files, out, (*SMALL, "train.max_steps=20")), progress=False)
    before = {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()}
    real_save = tf.train.CheckpointManager.save

    def save_until_the_disk_is_full(manager, checkpoint_number=None, **kwargs):
        partial = Path(manager.directory) / f"ckpt-{checkpoint_number}_temp"
        partial.mkdir()
        (partial / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tf.train.CheckpointManager, "save", save_until_the_disk_is_full)
    config = tiny_config(synthetic_files, out, (*SMALL, "train.max_steps=40"))
    with pytest.raises(TrainingError) as info:
        train(config, progress=False)
    monkeypatch.setattr(tf.train.CheckpointManager, "save", real_save)
    message = str(info.value)
    assert message.startswith(
        f"cannot write checkpoint {out}/checkpoints/ckpt-40: no space left on device; "
        "the earlier checkpoints are intact (latest: ckpt-20)"
    )
    assert "\n" not in message
    assert {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()} == before


@pytest.mark.slow
def test_file_size_limit_fails_a_real_save_in_one_line(synthetic_files, tmp_path):
    """The kernel refuses the checkpoint's data file mid-write (RLIMIT_FSIZE: EFBIG)."""
    out = tmp_path / "limited"
    train(tiny_config(synthetic_files, out, (*SMALL, "train.max_steps=10")), progress=False)
    before = {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()}
    data_size = max(len(v) for k, v in before.items() if ".data-" in k)
    config = tiny_config(synthetic_files, out, (*SMALL, "train.max_steps=20"))
    dump_config(config, tmp_path / "config.yaml")
    limit = data_size // 2  # above every other file the run writes, below the checkpoint's data

    proc = subprocess.run(
        _train_command(tmp_path / "config.yaml"),
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot write checkpoint {out}/checkpoints/ckpt-20: ")
    assert "the earlier checkpoints are intact (latest: ckpt-10)" in last
    assert {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()} == before


def test_unwritable_output_dir_is_one_clear_error(synthetic_files, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match=f"output_dir {blocker}/run is not writable"):
        train(tiny_config(synthetic_files, blocker / "run", SMALL), progress=False)


def test_training_writes_the_average_of_the_last_checkpoints(synthetic_files, tmp_path):
    out = tmp_path / "avg"
    overrides = (*SMALL, "train.max_steps=30", "train.checkpoint_every=10", "train.average_last=2")
    train(tiny_config(synthetic_files, out, overrides), progress=False)
    assert tf.train.latest_checkpoint(str(out / "averaged")).endswith("ckpt-30")
    averaged = Translator.load(out).model.weights  # "best" prefers averaged/
    last = Translator.load(out, checkpoint="latest").model  # ckpt-30
    previous = Translator.load(out, checkpoint="latest").model
    tf.train.Checkpoint(model=previous).restore(str(out / "checkpoints" / "ckpt-20"))
    for avg, a, b in zip(averaged, previous.weights, last.weights, strict=True):
        np.testing.assert_allclose(avg.numpy(), (a.numpy() + b.numpy()) / 2, rtol=1e-6)
    pairs = zip(averaged, last.weights, strict=True)
    assert any(not np.allclose(a.numpy(), b.numpy()) for a, b in pairs)

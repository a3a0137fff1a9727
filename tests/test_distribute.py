"""tf.distribute: mirrored replicas and real multi-worker processes train like one device.

Logical devices must be configured before TensorFlow initialises, and each worker of a cluster
is its own process, so these tests run training in subprocesses (bounded by timeouts).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from translator.api import Translator
from translator.config import dump_config
from translator.distribute import make_strategy, read_tf_config
from translator.errors import ConfigError

SMALL = (
    "model.units=16",
    "model.embedding_dim=16",
    "train.batch_size=24",  # on a few hundred pairs: every epoch ends with odd partial batches
    "train.learning_rate=0.01",
    # Near the gradient norm (~0.25), so clipping acts on some steps only: clipping each
    # replica's part instead of the sum then changes the updates (had every step been clipped,
    # Adam's invariance to a constant gradient scale would hide it).
    "train.clip_norm=0.2",
    "train.eval_bleu_sentences=10",
    "train.log_every=5",
)


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", **extra)
    return env


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _tf_config(ports: list[int], index: int) -> str:
    workers = [f"localhost:{p}" for p in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from translator.config import load_config
    from translator.distribute import distribute_batches, make_strategy, values_from_chief
    from translator.train import Trainer

    # Every row of every global batch reaches exactly one replica (fillers carry no target).
    strategy = make_strategy("mirrored")
    rows = tf.range(1, 12, dtype=tf.int32)[:, None] * tf.ones([1, 3], tf.int32)  # [11, 3]
    ds = tf.data.Dataset.from_tensor_slices((rows, rows, rows)).batch(4)  # 4, 4, 3 rows
    seen = []
    for batch in distribute_batches(strategy, ds):
        parts = strategy.experimental_local_results(batch[2])
        assert len({int(p.shape[0]) for p in parts}) == 1, "unequal replica slices"
        seen += [int(r[0]) for p in parts for r in p.numpy() if r[0] != 0]
    assert sorted(seen) == list(range(1, 12)), seen
    # The chief's values reach every replica (int and float, in one call).
    values = values_from_chief(strategy, [tf.constant([4, 5], tf.int64), tf.Variable(2.5)])
    assert values[0].numpy().tolist() == [4, 5] and float(values[1]) == 2.5

    out = {}
    for name in ("default", "mirrored"):
        overrides = [f"train.strategy={name}", f"output_dir={sys.argv[2]}/{name}"]
        config = load_config(sys.argv[1], overrides)
        trainer = Trainer(config, progress=False)
        result = trainer.fit()
        np.savez(f"{sys.argv[2]}/{name}.npz", *[w.numpy() for w in trainer.model.weights])
        out[name] = {"replicas": trainer.strategy.num_replicas_in_sync, "steps": result.steps,
                     "history": result.history}
    print("RESULT " + json.dumps(out))
    """
)


@pytest.mark.slow
def _small_train_set(synthetic_files, directory, pairs: int = 150) -> tuple[str, str]:
    """Overrides training on the first `pairs` pairs: short epochs (batches of 24 pairs end
    each epoch with partial batches of odd sizes)."""
    paths = {}
    for side in ("src", "tgt"):
        paths[side] = directory / f"small.{side}"
        lines = synthetic_files[f"train.{side}"].read_text().splitlines(keepends=True)
        paths[side].write_text("".join(lines[:pairs]))
    return f"data.train.source={paths['src']}", f"data.train.target={paths['tgt']}"


@pytest.mark.slow
def test_mirrored_on_two_cpu_devices_matches_default(synthetic_files, tmp_path):
    small = _small_train_set(synthetic_files, tmp_path)
    overrides = (*SMALL, *small, "train.max_steps=0", "train.epochs=2")
    config = tiny_config(synthetic_files, tmp_path / "unused", overrides)
    dump_config(config, tmp_path / "config.yaml")
    proc = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, str(tmp_path / "config.yaml"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=400,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    default, mirrored = result["default"], result["mirrored"]
    assert (default["replicas"], mirrored["replicas"]) == (1, 2)
    assert default["steps"] == mirrored["steps"] > 0
    for a, b in zip(default["history"], mirrored["history"], strict=True):
        for key in ("train_loss", "valid_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), key
    assert default["history"][-1]["train_loss"] < default["history"][0]["train_loss"]
    # Two replicas sum the loss and its gradients in another order; after two epochs of Adam
    # (which divides by the gradient's running scale) a near-zero weight differed by 1.2e-5.
    # A wrong share of the loss per replica moves weights by up to a learning rate (0.01).
    with np.load(tmp_path / "default.npz") as a, np.load(tmp_path / "mirrored.npz") as b:
        for key in a.files:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=3e-5)


WORKER_SCRIPT = textwrap.dedent(
    """
    import json, logging, sys
    import numpy as np
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from translator.config import load_config
    from translator.train import Trainer

    config = load_config(sys.argv[1], [f"output_dir={sys.argv[2]}", *sys.argv[4:]])
    trainer = Trainer(config, progress=False)
    result = trainer.fit()
    np.savez(sys.argv[3], *[w.numpy() for w in trainer.model.weights])
    print("RESULT " + json.dumps({"steps": result.steps, "chief": trainer.is_chief}))
    """
)


def _run_cluster(
    config_path, tmp_path, outs, weights, overrides, timeout=300, script=WORKER_SCRIPT
) -> list[dict]:
    """Starts one worker process per output dir on loopback; returns their results."""
    ports = _free_ports(len(outs))
    procs = []
    try:
        for i, (out, npz) in enumerate(zip(outs, weights, strict=True)):
            scratch = tmp_path / f"tmp{i}"
            scratch.mkdir(exist_ok=True)
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        script,
                        str(config_path),
                        str(out),
                        str(npz),
                        *overrides,
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=_env(TF_CONFIG=_tf_config(ports, i), TMPDIR=str(scratch)),
                )
            )
        deadline = time.monotonic() + timeout
        results = []
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert proc.returncode == 0, stderr[-3000:]
            results.append({**json.loads(stdout.split("RESULT ", 1)[1]), "log": stderr})
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.slow
def test_two_workers_train_resume_and_agree(synthetic_files, tmp_path):
    small = _small_train_set(synthetic_files, tmp_path, pairs=300)
    no_valid = ("data.valid.source=null", "data.valid.target=null")  # no BLEU decoding: faster
    overrides = (*SMALL, *small, *no_valid, "train.max_steps=0", "train.epochs=1")
    config = tiny_config(synthetic_files, tmp_path / "unused", overrides)
    dump_config(config, tmp_path / "config.yaml")
    outs = [tmp_path / "chief", tmp_path / "worker1"]
    weights = [tmp_path / "w0.npz", tmp_path / "w1.npz"]
    common = ("train.strategy=multi_worker", "train.cluster_timeout=120")

    first = _run_cluster(
        tmp_path / "config.yaml", tmp_path, outs, weights, (*common, "train.epochs=1")
    )
    second = _run_cluster(
        tmp_path / "config.yaml", tmp_path, outs, weights, (*common, "train.epochs=2")
    )

    assert [r["chief"] for r in second] == [True, False]
    steps_per_epoch = first[0]["steps"]
    assert [r["steps"] for r in first] == [steps_per_epoch] * 2
    assert [r["steps"] for r in second] == [2 * steps_per_epoch] * 2
    for r in second:  # both workers resumed from the chief's checkpoint
        assert f"at step {steps_per_epoch} (epoch 2, batch 0)" in r["log"]
    with np.load(weights[0]) as a, np.load(weights[1]) as b:
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])
    history = json.loads((outs[0] / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    assert history[1]["train_loss"] < history[0]["train_loss"]
    latest = tf.train.latest_checkpoint(str(outs[0] / "checkpoints"))
    assert latest.endswith(f"ckpt-{2 * steps_per_epoch}")
    assert not outs[1].exists()  # the other worker wrote nothing there ...
    assert not any((tmp_path / "tmp1").iterdir())  # ... and cleaned its temporary checkpoints


SHARD_SCRIPT = textwrap.dedent(
    """
    import json, logging, sys, tempfile
    from pathlib import Path
    import keras
    import numpy as np
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from translator.config import load_config
    from translator.distribute import distribute_batches, worker_count
    from translator.pipeline import collect
    from translator.train import Trainer
    from translator.training.data import epoch_batches, load_data

    config = load_config(sys.argv[1], [f"output_dir={sys.argv[2]}", *sys.argv[4:]])
    trainer = Trainer(config, progress=False)
    strategy, workers = trainer.strategy, worker_count(trainer.strategy)
    keras.utils.set_random_seed(config.train.seed)
    scratch = Path(tempfile.mkdtemp())
    _, pairs, _ = load_data(config, scratch, scratch, is_chief=True)
    # This worker's rows of epoch 0 (filler rows, without target tokens, left out).
    rows, steps = [], 0
    for batch in distribute_batches(strategy, epoch_batches(pairs, config, 0, 0, workers)):
        steps += 1
        source, _, target_out = (strategy.experimental_local_results(t)[0] for t in batch)
        for src, out in zip(source.numpy(), target_out.numpy()):
            if out.any():
                rows.append(src[src != 0][:-1].tolist())  # without EOS
    corpus = collect(pairs.pairs(1, 0), pairs.size, config.data.max_length).source.to_list()
    result = trainer.fit()
    np.savez(sys.argv[3], *[w.numpy() for w in trainer.model.weights])
    print("RESULT " + json.dumps({"steps": result.steps, "chief": trainer.is_chief,
          "epoch_steps": steps, "rows": rows, "corpus": corpus}))
    """
)


@pytest.mark.slow
def test_two_workers_read_disjoint_shards_of_a_streamed_corpus(synthetic_files, tmp_path):
    """Streamed (data.in_memory_pairs=0): each worker reads its own shard; together the shards
    hold every pair once per epoch, and the workers step together to the end of the epoch
    (the one whose shard ends first gets filler rows). Resumed mid-epoch, both end the epoch
    at the same step with the same weights."""
    small = _small_train_set(synthetic_files, tmp_path, pairs=300)
    no_valid = ("data.valid.source=null", "data.valid.target=null")
    overrides = (*SMALL, *small, *no_valid, "train.max_steps=0", "data.in_memory_pairs=0")
    overrides += ("train.epochs=1",)
    config = tiny_config(synthetic_files, tmp_path / "unused", overrides)
    dump_config(config, tmp_path / "config.yaml")
    outs = [tmp_path / "chief", tmp_path / "worker1"]
    weights = [tmp_path / "w0.npz", tmp_path / "w1.npz"]
    common = ("train.strategy=multi_worker", "train.cluster_timeout=120", "train.epochs=1")

    first = _run_cluster(
        tmp_path / "config.yaml",
        tmp_path,
        outs,
        weights,
        (*common, "train.max_steps=4"),
        script=SHARD_SCRIPT,
    )
    rows = [[tuple(r) for r in result["rows"]] for result in first]
    corpus = sorted(tuple(r) for r in first[0]["corpus"])
    assert len(corpus) == 300 and first[1]["corpus"] == first[0]["corpus"]
    assert rows[0] and rows[1] and not set(rows[0]) & set(rows[1])  # disjoint shards ...
    assert sorted(rows[0] + rows[1]) == corpus  # ... that hold every pair once
    epoch_steps = first[0]["epoch_steps"]
    assert first[1]["epoch_steps"] == epoch_steps >= 300 // 24
    assert [r["steps"] for r in first] == [4, 4]

    second = _run_cluster(tmp_path / "config.yaml", tmp_path, outs, weights, common)
    assert [r["steps"] for r in second] == [epoch_steps] * 2
    for r in second:  # both workers resumed mid-epoch from the chief's checkpoint
        assert "at step 4 (epoch 1, batch 4)" in r["log"]
    with np.load(weights[0]) as a, np.load(weights[1]) as b:
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])


def _cli_train(config_path, tf_config, *overrides) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "translator",
            "train",
            str(config_path),
            "--no-progress",
            "--set",
            "train.strategy=multi_worker",
            *[f"--set={o}" for o in overrides],
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(TF_CONFIG=tf_config),
    )


@pytest.mark.slow
def test_unreachable_cluster_fails_clearly_within_the_timeout(synthetic_files, tmp_path):
    config = tiny_config(synthetic_files, tmp_path / "out", SMALL)
    dump_config(config, tmp_path / "config.yaml")
    leader_ports, follower_ports = _free_ports(2), _free_ports(2)
    procs = {
        # Worker 0 leads the cluster; nobody listens on worker 1's port.
        "leader": _cli_train(
            tmp_path / "config.yaml", _tf_config(leader_ports, 0), "train.cluster_timeout=3"
        ),
        # Worker 1 alone: the leader it registers with never comes up.
        "follower": _cli_train(
            tmp_path / "config.yaml", _tf_config(follower_ports, 1), "train.cluster_timeout=3"
        ),
    }
    errors = {}
    try:
        for name, proc in procs.items():
            _, stderr = proc.communicate(timeout=120)
            assert proc.returncode == 2, (name, stderr[-2000:])
            errors[name] = stderr.strip().splitlines()[-1]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert errors["leader"].startswith(
        f"error: cannot reach worker:1 at localhost:{leader_ports[1]}"
    )
    assert "train.cluster_timeout=3 s" in errors["leader"]
    assert errors["follower"].startswith("error: worker worker:1 could not join the cluster")
    assert "train.cluster_timeout=3 s" in errors["follower"]
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.parametrize(
    ("tf_config", "message"),
    [
        (None, "needs the TF_CONFIG environment variable"),
        ("{not json", "TF_CONFIG must be JSON like"),
        (
            '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}',
            "TF_CONFIG task worker:3 is not in its cluster",
        ),
    ],
)
def test_bad_tf_config_is_a_config_error(monkeypatch, tf_config, message):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ConfigError, match=message):
        make_strategy("multi_worker")


def test_tf_config_is_read(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", _tf_config([1111, 2222], 1))
    cluster, task_type, index = read_tf_config()
    assert cluster == {"worker": ["localhost:1111", "localhost:2222"]}
    assert (task_type, index) == ("worker", 1)


@pytest.mark.slow
def test_two_workers_fine_tune_from_the_chiefs_init_weights(trained_dir, synthetic_files, tmp_path):
    """`train.init_from`: the chief reads the init model's weights and hands them over; at
    learning rate 0 both workers still hold them after two updates."""
    small = _small_train_set(synthetic_files, tmp_path, pairs=100)
    no_valid = ("data.valid.source=null", "data.valid.target=null")
    overrides = (*small, *no_valid, "train.max_steps=2", "train.learning_rate=0")
    config = tiny_config(synthetic_files, tmp_path / "unused", overrides)
    dump_config(config, tmp_path / "config.yaml")
    outs = [tmp_path / "chief", tmp_path / "worker1"]
    weights = [tmp_path / "w0.npz", tmp_path / "w1.npz"]
    common = ("train.strategy=multi_worker", "train.cluster_timeout=120")
    init_from = f"train.init_from={trained_dir}"
    results = _run_cluster(tmp_path / "config.yaml", tmp_path, outs, weights, (*common, init_from))

    assert [r["steps"] for r in results] == [2, 2]
    init = Translator.load(trained_dir).model.weights
    for npz in weights:
        with np.load(npz) as held:
            for key, expected in zip(held.files, init, strict=True):
                np.testing.assert_array_equal(held[key], expected.numpy())
    assert (outs[0] / "spm.source.model").read_bytes() == (
        trained_dir / "spm.source.model"
    ).read_bytes()
    assert not outs[1].exists()

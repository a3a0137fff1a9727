"""tf.distribute for the trainer: strategies, joining a cluster, per-replica batches, the chief.

`train.strategy` picks one of three strategies; the trainer runs the same loop under each:

- `default`: one device.
- `mirrored`: every local GPU, or every logical CPU device when there is no GPU (tests split
  the CPU with `tf.config.set_logical_device_configuration`).
- `multi_worker`: `MultiWorkerMirroredStrategy`, the cluster taken from `TF_CONFIG`, the same
  `translator train` command started on every worker. Joining is bounded by
  `train.cluster_timeout`: a worker that cannot reach the others fails with a `TrainingError`
  instead of hanging.

Data comes in one of two ways, and either way every pair is trained on once per epoch across
the cluster:

- the same global batches on every worker (same corpus, same seed): each replica takes its
  slice of each global batch, and every worker runs the same number of steps;
- a function giving each worker (input pipeline) the batches of its own shard of the corpus,
  each a share of a global batch, cut into slices for the worker's replicas. Shards end after
  different numbers of batches: the distributed iterator agrees on the end of the data across
  workers (an all-reduce per step) and gives a worker whose shard has run out empty batches
  until the last one has, and `fill_empty` turns those into one row without target tokens
  (no loss, no gradient).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from translator.errors import ConfigError, TrainingError
from translator.tokenizer import BOS_ID, EOS_ID

log = logging.getLogger(__name__)

_COORDINATED_JOBS = ("chief", "worker")  # the jobs MultiWorkerMirroredStrategy trains with
# One MirroredStrategy per device set and process: two strategies number their collective ops
# from the same start, so the second one's all-reduces collide with the first one's
# ("Collective instance N expected ... data_type") when a process trains twice (a notebook).
_MIRRORED: dict[tuple[str, ...], tf.distribute.MirroredStrategy] = {}


def make_strategy(name: str, cluster_timeout: float = 300.0) -> tf.distribute.Strategy:
    """The tf.distribute strategy named by `train.strategy` (see the module docstring)."""
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        names = tuple(d.name for d in devices)
        if names not in _MIRRORED:
            _MIRRORED[names] = tf.distribute.MirroredStrategy(list(names))
        log.info("mirrored strategy on %s", ", ".join(names))
        return _MIRRORED[names]
    if name == "multi_worker":
        return _multi_worker_strategy(cluster_timeout)
    return tf.distribute.get_strategy()


def read_tf_config() -> tuple[dict[str, list[str]], str, int]:
    """The cluster (job -> addresses), task type and task index from `TF_CONFIG`.

    Raises:
        ConfigError: TF_CONFIG is missing, not JSON, or does not name this task in the cluster.
    """
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ConfigError("train.strategy=multi_worker needs the TF_CONFIG environment variable")
    try:
        spec = json.loads(raw)
        cluster = {job: list(addresses) for job, addresses in spec["cluster"].items()}
        task_type, index = str(spec["task"]["type"]), int(spec["task"]["index"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError(
            'TF_CONFIG must be JSON like {"cluster": {"worker": ["host1:port", "host2:port"]}, '
            f'"task": {{"type": "worker", "index": 0}}}}, got {raw!r}'
        ) from None
    if not 0 <= index < len(cluster.get(task_type, [])):
        raise ConfigError(f"TF_CONFIG task {task_type}:{index} is not in its cluster {cluster}")
    return cluster, task_type, index


def _leader(cluster: dict[str, list[str]]) -> tuple[str, int]:
    """The task that leads the cluster (TensorFlow's rule): chief 0 if any, else worker 0."""
    return ("chief", 0) if cluster.get("chief") else ("worker", 0)


def _multi_worker_strategy(timeout: float) -> tf.distribute.Strategy:
    cluster, task_type, index = read_tf_config()
    members = [(job, i, a) for job in _COORDINATED_JOBS for i, a in enumerate(cluster.get(job, []))]
    if len(members) > 1:
        _configure_coordination(cluster, timeout)
        if (task_type, index) == _leader(cluster):
            # The leader would wait forever for missing workers inside TensorFlow; the other
            # workers start their servers first and give up after the registration timeout.
            others = [(j, i, a) for j, i, a in members if (j, i) != (task_type, index)]
            _wait_for_peers(others, timeout)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except tf.errors.OpError as exc:
        leader = "{}:{}".format(*_leader(cluster))
        raise TrainingError(
            f"worker {task_type}:{index} could not join the cluster (leader {leader} at "
            f"{cluster[_leader(cluster)[0]][0]}) within train.cluster_timeout={timeout:g} s: "
            f"{exc.message.splitlines()[0]}; start the same command on every machine in TF_CONFIG"
        ) from None
    log.info(
        "multi-worker strategy: task %s:%d of %d workers, %d replicas",
        task_type,
        index,
        len(members),
        strategy.num_replicas_in_sync,
    )
    return strategy


def _configure_coordination(cluster: dict[str, list[str]], timeout: float) -> None:
    """Sets up TensorFlow's coordination service as the strategy would, plus a join timeout.

    MultiWorkerMirroredStrategy keeps a configuration made before it is created. TensorFlow
    has no public API for the registration timeout, hence the private modules (pinned TF).
    """
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    if context.context().coordination_service is not None:
        return
    jobs = [
        coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(cluster[job]))
        for job in _COORDINATED_JOBS
        if cluster.get(job)
    ]
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader="/job:{}/replica:0/task:{}".format(*_leader(cluster)),
        coordinated_jobs=jobs,
        cluster_register_timeout_in_ms=int(timeout * 1000),
    )


def _wait_for_peers(peers: Sequence[tuple[str, int, str]], timeout: float) -> None:
    """Waits until every peer's address accepts TCP connections, for at most `timeout` s."""
    deadline = time.monotonic() + timeout
    waiting = list(peers)
    while waiting:
        waiting = [peer for peer in waiting if not _accepts(peer[2])]
        if not waiting:
            return
        if time.monotonic() >= deadline:
            names = ", ".join(f"{job}:{i} at {address}" for job, i, address in waiting)
            raise TrainingError(
                f"cannot reach {names} within train.cluster_timeout={timeout:g} s; start the same "
                "command on every machine in TF_CONFIG and check the addresses and firewalls"
            )
        time.sleep(0.5)


def _accepts(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2.0):
            return True
    except (OSError, ValueError):
        return False


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the outputs: always, except on the non-chief workers."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return True
    jobs = resolver.cluster_spec().as_dict()
    if not jobs:
        return True
    if "chief" in jobs:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


def worker_count(strategy: tf.distribute.Strategy) -> int:
    """Processes training together (1 unless multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    jobs = resolver.cluster_spec().as_dict()
    return max(1, sum(len(jobs.get(job, [])) for job in _COORDINATED_JOBS))


def distribute_batches(
    strategy: tf.distribute.Strategy,
    dataset: tf.data.Dataset | Callable[[int, int], tf.data.Dataset],
) -> tf.distribute.DistributedDataset:
    """Gives every replica its slice of each global batch (see the module docstring).

    Args:
        strategy: the run's strategy.
        dataset: the global batches `(source, target_in, target_out)`, the same on every
            worker; or `dataset(pipelines, index)` -> input pipeline `index`'s own batches.

    Each batch is padded with rows that hold no target token (source EOS, target BOS, labels all
    pad: zero loss and zero gradient) to a multiple of the replicas it feeds and cut into equal
    slices.
    """
    replicas = strategy.num_replicas_in_sync

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        local = replicas // context.num_input_pipelines
        if callable(dataset):
            own = dataset(context.num_input_pipelines, context.input_pipeline_id)
            own_slices = tf.autograph.experimental.do_not_convert(lambda *b: _slices(b, local))
            return own.map(own_slices).unbatch()
        first = context.input_pipeline_id * local

        @tf.autograph.experimental.do_not_convert
        def slices(*batch):  # this worker's replicas' slices only
            return tuple(t[first : first + local] for t in _slices(batch, replicas))

        return dataset.map(slices).unbatch()

    return strategy.distribute_datasets_from_function(dataset_fn)


def _slices(batch: tuple, parts: int) -> tuple:
    """`[rows, time]` tensors, padded to a multiple of `parts` rows -> `[parts, rows / parts,
    time]`."""
    batch = _pad_to_multiple(batch, parts)
    return tuple(tf.reshape(t, [parts, -1, tf.shape(t)[1]]) for t in batch)


def fill_empty(batch: tuple) -> tuple:
    """A replica's `(source, target_in, target_out)` batch, or when it has no rows (its worker's
    shard ran out before the others') one row without target tokens: every layer then sees an
    ordinary sequence, and the row adds nothing to the loss or the gradient."""
    source, target_in, target_out = batch
    filler = (
        tf.constant([[EOS_ID]], source.dtype),
        tf.constant([[BOS_ID]], target_in.dtype),
        tf.zeros([1, 1], target_out.dtype),
    )
    empty = tf.equal(tf.shape(source)[0], 0)
    return tuple(
        tf.cond(empty, lambda f=f: f, lambda t=t: t) for t, f in zip(batch, filler, strict=True)
    )


def _pad_to_multiple(batch: tuple, multiple: int) -> tuple:
    """Appends rows without target tokens to `[rows, time]` tensors up to a multiple of rows."""
    source, target_in, target_out = batch
    extra = -tf.shape(source)[0] % multiple

    def rows(t: tf.Tensor, first: int) -> tf.Tensor:
        if first == 0:
            return tf.zeros([extra, tf.shape(t)[1]], t.dtype)
        head = tf.fill([extra, 1], tf.constant(first, t.dtype))
        return tf.concat([head, tf.zeros([extra, tf.shape(t)[1] - 1], t.dtype)], 1)

    # EOS and BOS keep every filler sequence non-empty: ordinary inputs for any LSTM kernel.
    return (
        tf.concat([source, rows(source, EOS_ID)], 0),
        tf.concat([target_in, rows(target_in, BOS_ID)], 0),
        tf.concat([target_out, rows(target_out, 0)], 0),
    )


def values_from_chief(
    strategy: tf.distribute.Strategy, values: Sequence[tf.Tensor | tf.Variable]
) -> list[tf.Tensor]:
    """Every worker gets the chief's (replica 0's) value of each of `values`.

    An all-reduce sum where only replica 0 contributes: a broadcast with the strategy's own
    collectives, so it needs no shared file system.
    """

    @tf.function
    def broadcast():
        def replica_fn():
            ctx = tf.distribute.get_replica_context()
            first = tf.equal(ctx.replica_id_in_sync_group, 0)
            local = [tf.convert_to_tensor(v) for v in values]
            by_dtype: dict[tf.DType, list[int]] = {}
            for i, v in enumerate(local):
                by_dtype.setdefault(v.dtype, []).append(i)
            out = [None] * len(local)
            for dtype, index in by_dtype.items():  # one all-reduce per dtype
                kept = [local[i] * tf.cast(first, dtype) for i in index]
                for i, value in zip(index, ctx.all_reduce("sum", kept), strict=True):
                    out[i] = value
            return out

        return strategy.run(replica_fn)

    return [strategy.experimental_local_results(v)[0] for v in broadcast()]


def sync_from_chief(strategy: tf.distribute.Strategy, variables: Sequence) -> None:
    """Assigns the chief's values to `variables` on every worker (after the chief restored)."""
    if worker_count(strategy) == 1:
        return
    for variable, value in zip(variables, values_from_chief(strategy, variables), strict=True):
        variable.assign(value)


def check_same_everywhere(strategy: tf.distribute.Strategy, data: bytes, what: str) -> None:
    """Raises TrainingError on every worker unless `data` is identical on all of them."""
    if worker_count(strategy) == 1:
        return
    digest = np.frombuffer(hashlib.sha256(data).digest()[:16], np.int32)
    (chief,) = values_from_chief(strategy, [tf.constant(digest)])
    differs = float(not np.array_equal(chief.numpy(), digest))
    (anyone,) = _sum_over_replicas(strategy, differs)
    if anyone > 0:
        raise TrainingError(
            f"workers disagree on {what}; give every worker the same data, config and files"
        )


def _sum_over_replicas(strategy: tf.distribute.Strategy, value: float) -> list[float]:
    @tf.function
    def reduce():
        def replica_fn():
            ctx = tf.distribute.get_replica_context()
            return ctx.all_reduce("sum", tf.constant(value, tf.float32))

        return strategy.run(replica_fn)

    return [float(strategy.experimental_local_results(reduce())[0])]

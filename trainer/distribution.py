"""Distributed training (`--hparam distribution=mirrored|multi_worker`): the tf.distribute
strategy the Trainer builds and fits its model under, and which worker exports.

- "" or "none" (default): no strategy; training runs as it always has.
- "mirrored": tf.distribute.MirroredStrategy over this machine's GPUs (or its one CPU).
- "multi_worker": tf.distribute.MultiWorkerMirroredStrategy over the workers that TF_CONFIG
  names (without TF_CONFIG: this process alone). Collective ops must be configured before
  TensorFlow runs anything, so `strategy()` must first be called at the start of the
  process's TensorFlow work (train_and_export does so); the strategy is created once per
  process and reused.

hp.batch_size is the global batch: each step splits it across all replicas.
"""

from __future__ import annotations

import contextlib

import tensorflow as tf

NONE = ("", "none")
KINDS = ("mirrored", "multi_worker")
_CREATED: dict = {}


def check(kind: str) -> None:
    if kind not in NONE + KINDS:
        raise ValueError(f"distribution must be one of none, {', '.join(KINDS)}; "
                         f"got {kind!r}")


def strategy(kind: str):
    """The strategy of `kind`, created on first use (None: no distribution)."""
    check(kind)
    if kind in NONE:
        return None
    if kind not in _CREATED:
        try:
            _CREATED[kind] = (tf.distribute.MirroredStrategy() if kind == "mirrored"
                              else tf.distribute.MultiWorkerMirroredStrategy())
        except RuntimeError as e:
            if "program startup" not in str(e):
                raise
            raise RuntimeError(
                "distribution=multi_worker across the workers of TF_CONFIG needs the "
                "Trainer to be the process's first TensorFlow work (TensorFlow configures "
                "collective ops only at startup): run it in a process of its own, such as "
                f"a Kubeflow or Vertex task, not after other components ({e})") from e
    return _CREATED[kind]


def scope(strategy):
    """The strategy's scope (variables created inside are mirrored), or no scope at all."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def replicas(strategy) -> int:
    return strategy.num_replicas_in_sync if strategy is not None else 1


def workers(strategy) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    return sum(len(spec.get(job, ())) for job in ("chief", "worker")) or 1


def is_chief(strategy) -> bool:
    """Whether this process writes the outputs: always, but among several workers only the
    chief (task "chief", or worker 0 when the cluster has no chief)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return True
    if resolver.task_type == "chief":
        return True
    jobs = resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in jobs


def shard_by_data(dataset, strategy):
    """Datasets built from in-memory arrays have no files to shard: among several workers,
    each keeps its own slice of every global batch (the workers' datasets are the same
    seeded sequence)."""
    if workers(strategy) <= 1:
        return dataset
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    return dataset.with_options(options)


def barrier(strategy) -> None:
    """Returns once every worker has got here (one collective all-reduce); at once on a
    single worker. At the end of training it keeps the other workers until the chief has
    exported (a shared output directory then holds the model whichever worker looks)."""
    if workers(strategy) > 1:
        total = strategy.reduce(tf.distribute.ReduceOp.SUM,
                                strategy.run(lambda: tf.constant(1.0)), axis=None)
        if int(total) != strategy.num_replicas_in_sync:
            raise RuntimeError(f"barrier: {int(total)} of "
                               f"{strategy.num_replicas_in_sync} replicas answered")

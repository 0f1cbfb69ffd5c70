"""Distributed training (`--hparam distribution=mirrored|multi_worker`) on the tiny data:
MirroredStrategy over two logical CPU devices, and MultiWorkerMirroredStrategy across two
local worker processes. Each run is a subprocess (logical devices and TF_CONFIG must be set
before TensorFlow initializes), bounded by a timeout that kills it: a hang fails the test
with the workers' output, never stalls the suite. The models they export are compared with
the single-device model of the same settings (conftest's trained_model)."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import tensorflow as tf
from conftest import SMALL_HPARAMS
from test_model import _batch, _vocab  # the model tests' tiny vocabulary and batch

from trainer import saved_model
from trainer import distribution, evaluation, saved_model
from trainer import features as F
from trainer.model import HParams, MovieRecModel

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "distributed_worker.py"
# Two replicas against one device on this data, seeds 42-44 (README "The model",
# Training): |delta| at most RMSE 0.017, top-10 0.0022, MRR 0.0005, within one device's
# seed-to-seed spread (RMSE 0.020, top-10 0.0022, MRR 0.0015).
RMSE_TOLERANCE = 0.03
TOP_10_TOLERANCE = 0.02
MRR_TOLERANCE = 0.005


# --------------------------------------------------------------------------- helpers
def _free_ports(n: int) -> list:
    """n distinct free ports on the loopback interface."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _run(jobs: list, tmp_path, timeout: float) -> list:
    """Starts every job ({args, env}) at once as a distributed_worker.py process; returns
    their summaries. Any job still running after `timeout` seconds is killed (all of them
    are) and the test fails with the tail of each one's output."""
    procs, logs = [], []
    for i, job in enumerate(jobs):
        args_file, log_file = tmp_path / f"args{i}.json", tmp_path / f"worker{i}.log"
        args_file.write_text(json.dumps(job["args"]))
        env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
        env.update(PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
                   CUDA_VISIBLE_DEVICES="", **job.get("env", {}))
        logs.append(log_file)
        with open(log_file, "w") as out:
            procs.append(subprocess.Popen([sys.executable, str(WORKER), str(args_file)],
                                          env=env, stdout=out, stderr=subprocess.STDOUT,
                                          cwd=str(ROOT)))
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    hung = [i for i, proc in enumerate(procs) if proc.poll() is None]
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    def tails():
        return "\n".join(f"--- worker {i} (exit {p.returncode}):\n"
                         + "\n".join(logs[i].read_text().splitlines()[-25:])
                         for i, p in enumerate(procs))

    if hung:
        pytest.fail(f"workers {hung} still running after {timeout:.0f} s (killed):\n{tails()}")
    if any(p.returncode for p in procs):
        pytest.fail(f"a worker failed:\n{tails()}")
    return [json.loads(pathlib.Path(job["args"]["summary"]).read_text()) for job in jobs]


def _args(example_files, transform_dir, out: pathlib.Path, **hparams) -> dict:
    return {"train": example_files["train"], "catalog": example_files["catalog"],
            "transform": transform_dir, "serving_dir": str(out / "model"),
            "summary": str(out / "summary.json"), "hparams": {**SMALL_HPARAMS, **hparams}}


def _metrics(path, example_files) -> dict:
    batches = list(evaluation.serialized_batches(example_files["eval"], batch_size=256))
    return evaluation.evaluate(saved_model.load(str(path)), batches)


@pytest.fixture(scope="module")
def single_device(trained_model, example_files):
    """Metrics and summary of the one-device model of SMALL_HPARAMS."""
    path, summary = trained_model
    return _metrics(path, example_files), summary


def _assert_close_to_single_device(metrics, single):
    assert abs(metrics["rmse"] - single["rmse"]) <= RMSE_TOLERANCE, (metrics, single)
    assert abs(metrics["top_10_accuracy"] - single["top_10_accuracy"]) <= TOP_10_TOLERANCE
    assert abs(metrics["mrr"] - single["mrr"]) <= MRR_TOLERANCE


# ----------------------------------------------------------------------------- tests
def test_mirrored_over_two_cpu_devices(example_files, transform_dir, tmp_path,
                                       single_device):
    """Two replicas on one machine: batch_size stays the global batch (the same steps
    per epoch, the same logged loss scale), the model exports, loads without any
    strategy and serves, and its metrics are within the tolerances of one device's."""
    single_metrics, single_summary = single_device
    job = {"args": {**_args(example_files, transform_dir, tmp_path,
                            distribution="mirrored"), "cpu_devices": 2}}
    [summary] = _run([job], tmp_path, timeout=300)
    assert summary["replicas"] == 2
    assert len(summary["history"]["loss"]) == SMALL_HPARAMS["epochs"]
    # the rating loss is the global batch's mean, as on one device
    for mirrored, single in zip(summary["history"]["rmse"], single_summary["history"]["rmse"]):
        assert abs(mirrored - single) < 0.05
    model = saved_model.load(str(tmp_path / "model"))
    out = saved_model.call(model, "recommend", user_id=tf.constant(["1", "nobody"]))
    assert out["known_user"].numpy().tolist() == [True, False]
    _assert_close_to_single_device(_metrics(tmp_path / "model", example_files),
                                   single_metrics)


def test_multi_worker_across_two_local_processes(example_files, transform_dir, tmp_path,
                                                 single_device):
    """Two workers (TF_CONFIG on loopback ports) both run train_and_export in step: the
    same logged history on both, only the chief (worker 0) exports, and the export is
    within the tolerances of one device's."""
    single_metrics, _ = single_device
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    jobs = []
    for index in range(2):
        out = tmp_path / f"w{index}"
        out.mkdir()
        jobs.append({"args": _args(example_files, transform_dir, out,
                                   distribution="multi_worker"),
                     "env": {"TF_CONFIG": json.dumps(
                         {"cluster": cluster, "task": {"type": "worker", "index": index}})}})
    chief, other = _run(jobs, tmp_path, timeout=420)
    assert chief["replicas"] == other["replicas"] == 2
    assert chief["history"] == other["history"]  # synchronous: the same steps on both
    assert (tmp_path / "w0" / "model" / "saved_model.pb").exists()
    assert not (tmp_path / "w1" / "model").exists()  # only the chief writes
    _assert_close_to_single_device(_metrics(tmp_path / "w0" / "model", example_files),
                                   single_metrics)


def test_multi_worker_after_other_tensorflow_work_fails_at_once(tmp_path):
    """TensorFlow configures collective ops only at startup: a multi-worker strategy asked
    for after the process has run TensorFlow ops (as `movierec run`'s single process has,
    with Transform) fails with that explanation, before connecting to any worker."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    code = ("import tensorflow as tf; tf.constant(1.0) + 1\n"
            "from trainer import distribution\n"
            "distribution.strategy('multi_worker')\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="",
               TF_CONFIG=json.dumps({"cluster": cluster,
                                     "task": {"type": "worker", "index": 0}}))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=180, cwd=str(ROOT))
    assert done.returncode != 0
    assert "RuntimeError: distribution=multi_worker" in done.stderr
    assert "Collective ops must be configured at program startup" in done.stderr


@pytest.mark.parametrize("heads", [1, 2])
def test_a_replicas_loss_is_the_single_device_loss_on_one_replica(heads):
    """The loss a replica computes under a strategy (the rating loss as a sum over the
    replica's slice divided by the global count, Keras refusing batch means there) equals
    the one-device loss when one replica holds the whole batch."""
    hp = HParams(rating_heads=heads, l2=1e-3, **SMALL_HPARAMS)
    batch = _batch(48)
    log_prob = np.log(np.full(20, 1 / 20))
    plain = MovieRecModel(_vocab(), hp, movie_log_prob=log_prob, mean_rating=3.0)
    plain(batch)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        mirrored = MovieRecModel(_vocab(), hp, movie_log_prob=log_prob, mean_rating=3.0)
        mirrored(batch)
    mirrored.set_weights(plain.get_weights())
    expected = float(plain.compute_loss(batch))
    got = strategy.run(lambda b: mirrored.compute_loss(b), args=(batch,))
    assert float(got) == pytest.approx(expected, rel=1e-5)
    assert float(mirrored.retrieval_loss_tracker.result()) == pytest.approx(
        float(plain.retrieval_loss_tracker.result()), rel=1e-5)
    # each replica adds its share of the L2 penalty (the replicas' gradients are summed)
    assert float(strategy.run(mirrored._regularization)) == pytest.approx(
        float(tf.add_n(plain.losses)), rel=1e-5)


def test_distribution_names_and_the_chief():
    assert HParams.from_dict({"distribution": "mirrored"}).distribution == "mirrored"
    assert distribution.strategy("") is None and distribution.strategy("none") is None
    with pytest.raises(ValueError, match="distribution must be one of"):
        HParams.from_dict({"distribution": "parameter_server"})

    def strategy(task_type, task_id, jobs):
        spec = tf.train.ClusterSpec(jobs)
        resolver = types.SimpleNamespace(task_type=task_type, task_id=task_id,
                                         cluster_spec=lambda: spec)
        return types.SimpleNamespace(cluster_resolver=resolver)

    workers = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    assert distribution.is_chief(None)
    assert distribution.is_chief(strategy("worker", 0, workers))
    assert not distribution.is_chief(strategy("worker", 1, workers))
    with_chief = {"chief": ["127.0.0.1:3"], **workers}
    assert distribution.is_chief(strategy("chief", 0, with_chief))
    assert not distribution.is_chief(strategy("worker", 0, with_chief))
    assert distribution.workers(strategy("chief", 0, with_chief)) == 3

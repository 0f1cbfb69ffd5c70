"""The Beam-powered components on a portable runner, as on a cluster: `movierec run` with
`--runner=PortableRunner` submits each Beam component's job to Beam's own job service
(`apache_beam.runners.portability.local_job_service_main`), whose SDK workers are separate
processes started by a worker pool (`apache_beam.runners.worker.worker_pool_main`,
`--environment_type=EXTERNAL`): the contract of the Flink, Spark and Dataflow runners.
The workers get the project's code only as a cluster's workers do, from their own
environment: the same venv first on their PATH and this checkout on their PYTHONPATH,
like an image with the project installed (nothing of the launching process travels but
what Beam pickles and stages).

The run must give what the DirectRunner gives on the same data: the same examples, the
same statistics, the same Transform output, then (the Trainer is not Beam, and it is
deterministic) the very same model, and the same TFMA and retrieval metrics.

Both runs are `python -m pipeline.cli run ...` processes, as a user starts them: the
pipeline's main module is then `pipeline.cli` itself, so a DoFn that used a name of the
main module would fail on the workers (the failure tensorflow/tfx #4948 reports). Both run
with `--tfxio_use_byte_size_batching`, an absl flag of TFX's data sources that TFX reads
from the Beam args. By default those sources batch examples with Beam's BatchElements,
whose batch sizes follow timing, so the float32 sums of Transform's mean and variance
(scale_to_z_score) may come out an ulp apart between two runs. Without the flag, a
DirectRunner and a PortableRunner run here differed by 2.4e-7 in timestamp_z_xf, by up to
7e-3 in the model's weights and by 1.2e-7 in RMSE.
"""

import glob
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import free_port
from pipeline import configs
from trainer import features as F

REPO = pathlib.Path(__file__).resolve().parents[1]
# the held-out protocol: its per-user recall / nDCG and independent figures
FAST = ["--epochs", "3", "--batch-size", "256", "--rmse-upper-bound", "2.0",
        "--split", "random"]
DETERMINISTIC = "--tfxio_use_byte_size_batching"
DIRECT_ARGS = f"--direct_num_workers=1 --direct_running_mode=in_memory {DETERMINISTIC}"
SPLITS = F.SPLITS
TOLERANCE = 1e-6
START_TIMEOUT_S = 180  # a service imports Beam first: ~10 s on 2 busy cores
RUN_TIMEOUT_S = 1500

# Runs a module as `python -m MODULE ARGS` would, with every gRPC server it opens bound to
# 127.0.0.1: Beam's job service, its per-job worker servers and the worker pool listen on
# all interfaces ('[::]:PORT'), and the pool starts a process for whoever asks.
LOOPBACK = """\
import runpy, sys
import grpc
_server = grpc.server
def server(*args, **kwargs):
    s = _server(*args, **kwargs)
    add = s.add_insecure_port
    s.add_insecure_port = lambda address: add(
        "127.0.0.1:" + address.rsplit(":", 1)[1])
    return s
grpc.server = server
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def worker_environment() -> dict:
    """The environment of the job service, the worker pool and so of every SDK worker:
    the pool starts each worker with the `python` first on its PATH, here this venv's,
    and this checkout first on PYTHONPATH (the venv's editable install may point at
    another checkout). On a cluster: an image with the project installed."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [str(REPO), env.get("PYTHONPATH", "")] if p)
    env.update(TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    return env


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _tail(path, lines: int = 40) -> str:
    text = pathlib.Path(path).read_text(errors="replace") if os.path.exists(path) else ""
    return "\n".join(text.splitlines()[-lines:])


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group (a pool's workers are in it), then SIGKILL to what is
    left of it after 15 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass


def _group_gone(pgid: int, timeout_s: float = 15.0) -> bool:
    """Whether process group `pgid` is empty (its zombies reaped) within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def _start(module: str, port_flag: str, log_dir: pathlib.Path, env: dict):
    """(process, port) of `python -m MODULE PORT_FLAG=PORT` on a free loopback port, in a
    process group of its own, once it accepts connections (a few tries if the port was
    taken meanwhile)."""
    for attempt in range(3):
        port = free_port()
        log = log_dir / f"{module.rsplit('.', 1)[-1]}-{attempt}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-c", LOOPBACK, module, f"{port_flag}={port}"],
                env=env, cwd=str(log_dir), stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None and not _listening(port):
            time.sleep(0.5)
        if proc.poll() is None and _listening(port):
            return proc, port, log
        _stop(proc)
    pytest.fail(f"{module} did not start: {_tail(log)}")


@pytest.fixture(scope="module")
def beam_services(tmp_path_factory):
    """Beam's job service and a worker pool for EXTERNAL environments, on loopback; both
    stopped with their process groups (the pool's workers included) at the end."""
    log_dir = tmp_path_factory.mktemp("beam-services")
    env = worker_environment()
    # what the pool will start: this venv's python, importing this checkout's code
    python = shutil.which("python", path=env["PATH"])
    assert python == os.path.join(os.path.dirname(sys.executable), "python")
    where = subprocess.run(
        [python, "-c", "import components, pipeline, trainer; "
         "print(*(m.__file__ for m in (components, pipeline, trainer)))"],
        env=env, capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert all(pathlib.Path(p).is_relative_to(REPO) for p in where), where
    started = []
    try:
        job_service, job_port, job_log = _start(
            "apache_beam.runners.portability.local_job_service_main", "--port", log_dir,
            env)
        started.append(job_service)
        pool, pool_port, pool_log = _start(
            "apache_beam.runners.worker.worker_pool_main", "--service_port", log_dir, env)
        started.append(pool)
        yield {"job_endpoint": f"127.0.0.1:{job_port}",
               "worker_pool": f"127.0.0.1:{pool_port}",
               "job_log": job_log, "pool_log": pool_log, "env": env,
               "pids": [p.pid for p in started]}
    finally:
        for proc in reversed(started):
            _stop(proc)
        for proc in started:  # nothing of theirs is left: no worker, no service
            assert _group_gone(proc.pid), proc.args


def _start_run(name: str, data_dir, out_dir, beam_args: str, env: dict, log_dir):
    """`python -m pipeline.cli run ...` started in a process of its own."""
    with open(log_dir / f"{name}.out", "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "run", "--data-dir", str(data_dir),
             "--output-dir", str(out_dir), *FAST, f"--beam-pipeline-args={beam_args}"],
            env=env, cwd=str(REPO), stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT)
    return {"name": name, "proc": proc, "started": time.monotonic(),
            "log": log_dir / f"{name}.out", "out": out_dir}


def _finish_run(run: dict, deadline: float) -> dict:
    """A started run waited for (killed past `deadline`): its seconds and output."""
    try:
        run["proc"].wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        run["proc"].kill()
        run["proc"].wait()
    run["seconds"] = time.monotonic() - run["started"]
    run["printed"] = run["log"].read_text(errors="replace")
    assert run["proc"].returncode == 0, f"{run['name']} run failed:\n" + "\n".join(
        run["printed"].splitlines()[-40:])
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ml100k_dir, beam_services):
    """The DirectRunner's run and the PortableRunner's, on the same tiny data, at once
    (each writes its own output directory; the portable run's components mostly wait on
    job submission and worker start-up, which the other run's work fills)."""
    root = tmp_path_factory.mktemp("portable")
    env = beam_services["env"]
    portable_args = (f"--runner=PortableRunner "
                     f"--job_endpoint={beam_services['job_endpoint']} "
                     f"--environment_type=EXTERNAL "
                     f"--environment_config={beam_services['worker_pool']} {DETERMINISTIC}")
    started = [_start_run("direct", ml100k_dir, root / "direct", DIRECT_ARGS, env, root),
               _start_run("portable", ml100k_dir, root / "portable", portable_args, env,
                          root)]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        direct, portable = (_finish_run(run, deadline) for run in started)
    finally:
        for run in started:
            if run["proc"].poll() is None:
                run["proc"].kill()
                run["proc"].wait()
    print(f"\nDirectRunner run {direct['seconds']:.0f} s, "
          f"PortableRunner run {portable['seconds']:.0f} s (at once)")
    for name, run in (("direct", direct), ("portable", portable)):
        print(name, *(line for line in run["printed"].splitlines()
                      if line.startswith("[") or line.startswith("finished")), sep="\n  ")
    for run in (direct, portable):
        run["artifacts"], run["metrics"] = _artifacts(run["out"])
    return {"direct": direct, "portable": portable, "portable_args": portable_args}


def _artifacts(out_dir) -> tuple:
    """({type: uri} of the run's artifacts, its metrics), from ML Metadata."""
    from pipeline import metadata

    store = metadata.connect(str(out_dir))
    run = metadata.find_run(store)
    uris = {t: metadata.run_artifacts(store, run, t)[-1].uri
            for t in ("Examples", "ExampleStatistics", "TransformGraph", "Model",
                      "ModelEvaluation", "movierec.RetrievalEvaluation")}
    return uris, metadata.run_metrics(store, run)


def _records(examples_uri: str, split: str) -> list:
    """The split's tf.Examples, each as sorted (feature, values) pairs, sorted."""
    import tensorflow as tf

    files = sorted(glob.glob(os.path.join(examples_uri, f"Split-{split}", "*")))
    assert files, (examples_uri, split)
    records = []
    for raw in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        example = tf.train.Example.FromString(raw.numpy())
        records.append(tuple(sorted(
            (name, tuple(getattr(feature, feature.WhichOneof("kind")).value))
            for name, feature in example.features.feature.items())))
    return sorted(records)


# ------------------------------------------------------------------------------- tests
def test_portable_runner_args_get_a_job_server_timeout():
    """Beam stops watching a portable job after 60 s by default ("Deadline Exceeded",
    while the job goes on): movierec gives job-service runners a day unless told."""
    config = configs.PipelineConfig(
        "", "", beam_pipeline_args=("--runner=PortableRunner", "--job_endpoint=h:1"))
    assert config.all_beam_args()[-1] == f"--job_server_timeout={24 * 3600}"
    for runner in ("FlinkRunner", "SparkRunner", "portable",
                   "apache_beam.runners.portability.flink_runner.FlinkRunner"):
        assert "--job_server_timeout=86400" in configs.PipelineConfig(
            "", "", beam_pipeline_args=(f"--runner={runner}",)).all_beam_args(), runner
    for args in ((), ("--runner=DirectRunner",), ("--runner", "DataflowRunner"),
                 ("--runner", "PortableRunner", "--job_server_timeout", "5"),
                 ("--runner=FlinkRunner", "--job-server-timeout=7")):
        assert configs.PipelineConfig("", "", beam_pipeline_args=args).all_beam_args() \
            == list(args), args


def test_the_beam_components_ran_on_the_job_service_and_its_workers(runs, beam_services):
    from pipeline import metadata
    from pipeline.pipeline import BEAM_COMPONENTS

    portable = runs["portable"]
    store = metadata.connect(str(portable["out"]))
    index = metadata._Index(store)
    executions = {index.component(e.id): e for e in
                  store.get_executions_by_context(metadata.find_run(store).id)}
    expected = runs["portable_args"].split() + ["--job_server_timeout=86400"]
    for name in BEAM_COMPONENTS:
        recorded = metadata.properties(executions[name])["beam_pipeline_args"]
        assert json.loads(recorded) == expected, name
    job_log = pathlib.Path(beam_services["job_log"]).read_text(errors="replace")
    assert job_log.count("with state DONE") == len(BEAM_COMPONENTS), _tail(
        beam_services["job_log"])
    pool_log = pathlib.Path(beam_services["pool_log"]).read_text(errors="replace")
    # one SDK worker process per job, each started with the venv's `python`
    assert pool_log.count("Starting worker with command ['python'") == len(BEAM_COMPONENTS)


@pytest.mark.parametrize("split", SPLITS)
def test_examples_equal_the_direct_runners(runs, split):
    direct = _records(runs["direct"]["artifacts"]["Examples"], split)
    portable = _records(runs["portable"]["artifacts"]["Examples"], split)
    assert len(direct) > 0 and portable == direct


def _feature_stats(statistics_uri: str, split: str) -> dict:
    """{(feature, statistic): value}: the example count and each feature's counts and
    means (common, numeric and string statistics, without histograms)."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    path = os.path.join(statistics_uri, f"Split-{split}", "FeatureStats.pb")
    with open(path, "rb") as f:
        stats = statistics_pb2.DatasetFeatureStatisticsList.FromString(f.read())
    (dataset,) = stats.datasets
    values = {("", "num_examples"): dataset.num_examples}
    for feature in dataset.features:
        name = ".".join(feature.path.step)
        kind = feature.WhichOneof("stats")
        stats = getattr(feature, kind)
        common = stats.common_stats
        for field in ("num_non_missing", "num_missing", "min_num_values",
                      "max_num_values", "avg_num_values", "tot_num_values"):
            values[(name, field)] = getattr(common, field)
        fields = {"num_stats": ("mean", "std_dev", "num_zeros", "min", "max"),
                  "string_stats": ("unique", "avg_length")}.get(kind, ())
        for field in fields:
            values[(name, field)] = getattr(stats, field)
    return values


@pytest.mark.parametrize("split", (F.TRAIN_SPLIT, F.EVAL_SPLIT))
def test_statistics_equal_the_direct_runners(runs, split):
    direct = _feature_stats(runs["direct"]["artifacts"]["ExampleStatistics"], split)
    portable = _feature_stats(runs["portable"]["artifacts"]["ExampleStatistics"], split)
    assert portable.keys() == direct.keys() and len(direct) > 20
    for key, value in direct.items():
        assert portable[key] == pytest.approx(value, rel=TOLERANCE, abs=TOLERANCE), key


def _transformed(transform_uri: str, examples_uri: str) -> dict:
    """{split: {output: array}}: the Transform graph applied to every example."""
    import tensorflow as tf
    import tensorflow_transform as tft

    output = tft.TFTransformOutput(transform_uri)
    layer = output.transform_features_layer()
    spec = output.raw_feature_spec()
    result = {}
    for split in SPLITS:
        files = sorted(glob.glob(os.path.join(examples_uri, f"Split-{split}", "*")))
        raw = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
        features = tf.io.parse_example(tf.constant(raw), {
            k: v for k, v in spec.items()
            if split != F.CATALOG_SPLIT or k in {f.name for f in F.MOVIE_FEATURES}})
        result[split] = {k: (tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor)
                             else v).numpy() for k, v in layer(features).items()}
    return result


@pytest.fixture(scope="module")
def transformed(runs):
    examples = runs["direct"]["artifacts"]["Examples"]  # equal in both runs (above)
    return {name: _transformed(runs[name]["artifacts"]["TransformGraph"], examples)
            for name in ("direct", "portable")}


def test_transform_output_equals_the_direct_runners(runs, transformed):
    graphs = {name: pathlib.Path(runs[name]["artifacts"]["TransformGraph"])
              for name in ("direct", "portable")}
    assets = sorted(p.name for p in (graphs["direct"] / "transform_fn" / "assets").iterdir())
    assert assets  # the vocabularies
    for name in assets:
        assert ((graphs["portable"] / "transform_fn" / "assets" / name).read_bytes()
                == (graphs["direct"] / "transform_fn" / "assets" / name).read_bytes()), name
    schema = pathlib.Path("transformed_metadata", "schema.pbtxt")
    assert (graphs["portable"] / schema).read_text() == (graphs["direct"] / schema).read_text()
    for split in SPLITS:
        direct, portable = transformed["direct"][split], transformed["portable"][split]
        assert portable.keys() == direct.keys()
        for key in direct:
            # bitwise: the Trainer below must see the same numbers
            assert np.array_equal(portable[key], direct[key]), (split, key, float(
                np.max(np.abs(portable[key].astype(np.float64) - direct[key]))))


def _variables(model_uri: str) -> dict:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(
        os.path.join(model_uri, "Format-Serving", "variables", "variables"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def test_the_trainer_makes_the_same_model_of_the_same_transform_output(runs):
    direct = _variables(runs["direct"]["artifacts"]["Model"])
    portable = _variables(runs["portable"]["artifacts"]["Model"])
    assert portable.keys() == direct.keys() and len(direct) > 10
    unequal = [name for name in direct if not np.array_equal(portable[name], direct[name])]
    assert not unequal, unequal


def test_metrics_equal_the_direct_runners(runs):
    direct, portable = runs["direct"]["metrics"], runs["portable"]["metrics"]
    for key in ("rmse", "mae", "mse", "example_count", "mrr", *(
            f"top_{k}_accuracy" for k in (1, 5, 10, 50, 100)), "recall_at_10",
            "ndcg_at_10"):
        assert portable[key] == pytest.approx(direct[key], abs=TOLERANCE), key
    numeric = {k for k, v in direct.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert numeric == {k for k, v in portable.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for key in numeric:
        assert portable[key] == pytest.approx(direct[key], abs=TOLERANCE), key
    assert direct["blessed"] is True and portable["blessed"] is True


def _state(pid: str) -> str:
    """A process's state letter (R, S, Z, ...), '' once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def test_each_sdk_worker_ends_with_its_job(beam_services, runs):
    """A worker exits when its job's control stream closes. Beam's job service never asks
    the pool to stop it (ExternalWorkerHandler.stop_worker does nothing), so the pool
    keeps each one as a zombie, without memory, until the pool itself ends (the fixture
    ends it with its process group)."""
    from pipeline.pipeline import BEAM_COMPONENTS

    pool = beam_services["pids"][-1]
    children = subprocess.run(["pgrep", "-P", str(pool)], capture_output=True,
                              text=True).stdout.split()
    assert len(children) == len(BEAM_COMPONENTS), children
    assert {_state(pid) for pid in children} <= {"Z", ""}, [
        (pid, _state(pid)) for pid in children]

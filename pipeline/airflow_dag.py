"""The movierec pipeline as an Apache Airflow DAG (TFX's AirflowDagRunner).

The DAG is built from the same ``pipeline.pipeline.create_pipeline(config)`` as
``movierec run``: one Airflow task per TFX component (task ids are the component ids,
``MovieLensExampleGen`` ... ``Pusher``), dag id ``movierec``. Each task runs its component
with TFX's launcher against the ML Metadata store in ``$MOVIEREC_OUTPUT_DIR``, so caching,
blessing against the latest blessed model and pushing work as in a local run. Two more
tasks take and give back the output directory's lock (see "The output-directory lock").

Settings come from environment variables, read when Airflow parses the DAG (so set them
for the scheduler and the workers alike). An empty variable counts as unset. They go
through ``pipeline.configs.from_options``, as ``movierec run``'s options do, so a value is
taken, converted and refused the same way (strings such as ``"3"`` or ``"true"`` are
fine); a bad one fails the DAG's import with ``MOVIEREC_<NAME>: <the message that
movierec run prints after "movierec: error: ">``:

``MOVIEREC_DATA_DIR`` (required: an absolute path, or a ``gs://`` / ``s3://`` URI)
    A MovieLens directory: ml-100k (``u.data``, ``u.item``, ``u.user``), ml-1m
    (``ratings.dat`` ...) or ml-latest/ml-25m (``ratings.csv`` ...); the layout is detected
    from the file names, so the directory must exist when Airflow parses the DAG.
``MOVIEREC_OUTPUT_DIR`` (required, absolute)
    Pipeline root (``pipeline/``), ``metadata.sqlite`` and ``serving/movierec/<version>/``.
``MOVIEREC_SCHEDULE`` (default ``@daily``)
    An Airflow preset (``@hourly``, ``@weekly`` ...) or a cron expression (``0 3 * * *``);
    ``none`` for runs triggered by hand only.
``MOVIEREC_START_DATE`` (default ``2025-01-01``)
    ISO date (or date-time, UTC unless it has an offset) of the first schedule interval.
    Catch-up is off: only the latest interval runs, never a backlog.
``MOVIEREC_RETRIES`` (default ``1``)
    How many times Airflow runs a task again after it failed or its process died (see
    "Retries"); ``0`` for none.
``MOVIEREC_RETRY_DELAY`` (default ``60``)
    Seconds before such a retry.
``MOVIEREC_SPLIT`` (default ``time``)
    ``random``, ``time`` or ``fold:NAME``, as ``--split``.
``MOVIEREC_SEED`` (default ``42``)
    Seed of the random split, as ``--seed``.
``MOVIEREC_HPARAMS`` (default ``{}``)
    JSON object of trainer hyperparameters (``trainer.model.HParams`` fields), as
    ``--hparam``: e.g. ``{"epochs": 3, "batch_size": 256}``; values may be strings
    (``{"epochs": "3"}``), converted to the field's type.
``MOVIEREC_EPOCHS``, ``MOVIEREC_BATCH_SIZE``, ``MOVIEREC_LEARNING_RATE`` (optional)
    As ``--epochs``, ``--batch-size``, ``--learning-rate``: each overrides the same key of
    ``MOVIEREC_HPARAMS``.
``MOVIEREC_EMBEDDING_DIM``, ``MOVIEREC_OPTIMIZER``, ``MOVIEREC_INDEX`` (optional)
    As ``--embedding-dim``, ``--optimizer``, ``--index`` (``brute_force`` or ``scann``),
    likewise.
``MOVIEREC_TIMESTAMP_BUCKETS`` (default ``1000``)
    Transform's quantile buckets of the ratings' times, as ``--timestamp-buckets``.
``MOVIEREC_RMSE_UPPER_BOUND`` (default ``1.07``)
    Blessing needs eval RMSE at most this, as ``--rmse-upper-bound``.
``MOVIEREC_BEAM_PIPELINE_ARGS`` (default none)
    Extra Beam pipeline args of the Beam components, space-separated, as
    ``--beam-pipeline-args``.
``MOVIEREC_BEAM_WORKERS`` (default ``0``: in-process)
    Beam multi-processing workers, as ``--beam-workers``.
``MOVIEREC_WARM_START`` (default ``false``)
    ``true``: the Trainer starts from the latest blessed model, as ``--warm-start``.
``MOVIEREC_ENABLE_CACHE`` (default ``true``)
    ``false``: re-execute every component instead of reusing cached results, as
    ``--no-cache``. (Not to be confused with ``MOVIEREC_CACHE``, the download cache of
    ``movierec run`` without ``--data-dir``.)
``MOVIEREC_METADATA_URI`` (default: SQLite in ``$MOVIEREC_OUTPUT_DIR/metadata.sqlite``)
    ``mysql://USER[:PASS]@HOST[:PORT]/DB``: ML Metadata on a database server, as
    ``--metadata-uri`` (the password may come from ``$MOVIEREC_METADATA_PASSWORD``).
``MOVIEREC_PIPELINE_NAME`` (default ``movierec``)
    The pipeline's name in ML Metadata, and so the DAG's id; in a shared metadata database
    ``movierec inspect`` / ``report`` take the same ``--pipeline-name``.
``MOVIEREC_PIPELINE_ROOT`` (default ``$MOVIEREC_OUTPUT_DIR/pipeline``)
    Where the components write artifacts, as ``--pipeline-root``: a local path or
    ``gs://BUCKET/...`` / ``s3://BUCKET/...`` (S3 as configured by ``S3_ENDPOINT``,
    ``AWS_*``; see trainer/storage.py).
``MOVIEREC_SERVING_DIR`` (default ``$MOVIEREC_OUTPUT_DIR/serving/movierec``)
    Where the Pusher writes blessed models, as ``--serving-dir``; may be a URI too.

Booleans take ``true``/``false``, ``1``/``0``, ``yes``/``no``, ``on``/``off``.

The output-directory lock
-------------------------
A DAG run holds the lock of ``$MOVIEREC_OUTPUT_DIR`` that ``movierec run`` takes
(``flock`` on ``OUT/.movierec.lock``) from its first task to its last, so ``movierec run``
on that directory meanwhile refuses with its usual "another movierec run is using OUT"
(and the DAG run's first task fails the same way while a ``movierec run`` is using it).
Airflow runs each task in a process of its own, so the lock is held by a small process
of its own, the *holder*, which the first task (``lock_output_dir``, an Airflow setup
task) starts and which records itself in ``OUT/.movierec.lease`` (JSON: dag id, run id,
pid, host). It lets go

- when the last task (``unlock_output_dir``, the matching teardown task, which runs
  whether the components succeeded or failed and does not decide the DAG run's state)
  tells it to;
- when the DAG run is no longer queued or running in Airflow's metadata database
  (checked every few seconds): marked failed or success by hand, or deleted;
- for ``airflow dags test`` / ``airflow tasks test``, which run the DAG run inside one
  process, when that process ends;
- when it dies (the kernel releases a ``flock``).

Every component task checks before it starts that the lease names its DAG run and that
the holder is alive, and starts a new holder if it is not (or fails with the usual
message if a ``movierec run`` took the directory meanwhile). A lease naming another DAG
run that is no longer running is stale: its holder is stopped and the lease taken over.
Only one run of the DAG is active at a time anyway (``max_active_runs=1``). The lock is
a lock of one host: run the tasks on the host that has the output directory (the
Sequential, Local or a one-host Celery executor); with an executor that runs each task in
a pod of its own, the holder ends with the first task's pod and only the running task's
own check guards the directory. To free a directory by hand, mark the DAG run failed (or
kill the holder: ``pid`` in the lease).

Retries
-------
Every task has ``MOVIEREC_RETRIES`` retries (default 1), ``MOVIEREC_RETRY_DELAY`` seconds
apart (default 60): a task that failed or whose process died (killed, out of memory) runs
once more. TFX's Airflow runner keeps one ML Metadata execution per component and DAG
run, which a second attempt cannot reuse (ML Metadata refuses its input events again), so
before a component task runs its component, what an earlier attempt of it left is set
aside (``pipeline.metadata.set_aside_attempt``): its unfinished execution is marked
CANCELED and renamed ``<component>@attempt-<k>``, and the new attempt is an execution of
its own, with outputs of its own. ``movierec inspect runs`` lists both and counts the run
by each component's latest execution. Executions that earlier DAG runs left unfinished
are marked CANCELED too, as ``movierec run`` does after a killed run.

Airflow finds a task whose process died with its "zombie" check, which has the DAG file
processor fail the task (which puts it up for retry); that processor parses the DAG file
first. Start the scheduler as ``python -m pipeline.airflow_scheduler`` (see there), or
raise ``AIRFLOW__SCHEDULER__ZOMBIE_DETECTION_INTERVAL`` above the DAG file's parse time:
otherwise Airflow 2.10 fails the retry too.

To schedule it, put a file holding the one line::

    from pipeline.airflow_dag import DAG

in Airflow's dags folder (or copy or symlink this module there: loaded as a file of its
own, it builds the module-level ``DAG`` at once; imported as ``pipeline.airflow_dag``, it
builds ``DAG`` on first access, so its functions can be imported without Airflow or the
settings). ``pipeline`` must be importable by Airflow's processes: install movierec into
Airflow's environment (``pip install -e .[airflow]``) or put the repository root on
``PYTHONPATH``. A missing or bad setting shows up as an import error of that file in
Airflow, naming the variable.

Importing TensorFlow and TFX takes about 25 s of CPU, close to Airflow's default DAG import
timeout (30 s); raise ``AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT`` and
``AIRFLOW__CORE__DAG_FILE_PROCESSOR_TIMEOUT`` (e.g. to 120 and 180), and consider
``AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL`` (seconds between re-parses, default 30)
of a few minutes. Every task process parses the DAG file too. ``python -m
pipeline.airflow_scheduler`` (``airflow scheduler`` with these imports done once, before
it forks its DAG file processors and, with the LocalExecutor, its task processes) makes a
parse take well under a second.
"""

from __future__ import annotations

import collections
import datetime
import functools
import json
import math
import os
import pathlib
import select
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Callable, Mapping

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before anything imports TensorFlow
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # hide CUDA-probe noise on CPU hosts

from pipeline.configs import HPARAM_SHORTCUTS  # noqa: E402
from pipeline.configs import PIPELINE_NAME as DAG_ID  # noqa: E402, F401 - the dag id
from pipeline import output_lock  # noqa: E402
from pipeline.errors import UserError  # noqa: E402

DEFAULT_SCHEDULE = "@daily"
DEFAULT_START_DATE = "2025-01-01"
DEFAULT_RETRIES = 1  # a task whose process died (killed, out of memory) runs once more
DEFAULT_RETRY_DELAY = 60.0  # seconds

# (variable, configs.from_options option): the settings of `movierec run` that a
# scheduled run takes (besides MOVIEREC_DATA_DIR and MOVIEREC_OUTPUT_DIR).
SETTINGS = (
    ("MOVIEREC_SPLIT", "split"),
    ("MOVIEREC_SEED", "seed"),
    ("MOVIEREC_HPARAMS", "hparams"),
    *((f"MOVIEREC_{name.upper()}", name) for name in HPARAM_SHORTCUTS),
    ("MOVIEREC_TIMESTAMP_BUCKETS", "timestamp_buckets"),
    ("MOVIEREC_RMSE_UPPER_BOUND", "rmse_upper_bound"),
    ("MOVIEREC_BEAM_PIPELINE_ARGS", "beam_pipeline_args"),
    ("MOVIEREC_BEAM_WORKERS", "beam_workers"),
    ("MOVIEREC_WARM_START", "warm_start"),
    ("MOVIEREC_ENABLE_CACHE", "enable_cache"),
    ("MOVIEREC_METADATA_URI", "metadata_uri"),
    ("MOVIEREC_PIPELINE_NAME", "pipeline_name"),
    ("MOVIEREC_PIPELINE_ROOT", "pipeline_root_override"),
    ("MOVIEREC_SERVING_DIR", "serving_dir_override"),
)

# What building the DAG imports: TensorFlow, TFX and the pipeline's modules, ~20 s of CPU
# that pipeline.airflow_scheduler spends once instead of in every process that parses
# the DAG file (see preload).
PRELOAD_MODULES = ("tfx.orchestration.airflow.airflow_dag_runner", "pipeline.pipeline",
                   "components.movielens_example_gen.movielens", "pipeline.configs",
                   "pipeline.metadata", "airflow.operators.python")

# The output-directory lock (see the module docstring).
LEASE_FILE = ".movierec.lease"
LOCK_TASK, UNLOCK_TASK = "lock_output_dir", "unlock_output_dir"
HOLDER_MARK = "movierec-lock-holder"  # in the holder's command line
HOLDER_POLL_SECONDS = 5.0
HOLDER_STOP_SECONDS = 30.0
_ACTIVE_STATES = ("queued", "running")
_HOLDERS: list = []  # Popen objects of the holders this process started (to reap them)


class ConfigError(UserError, ValueError):
    """A missing or malformed MOVIEREC_* setting; its message starts with the variable."""


class OutputBusy(UserError):
    """The output directory is in use by another movierec run or DAG run."""


# -------------------------------------------------------------------------- settings
def _absolute_dir(environ: Mapping[str, str], name: str, uri: bool = False) -> str:
    """The absolute local directory of variable `name` (`uri`: or a gs:// / s3:// URI)."""
    value = environ.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is not set")
    if uri and "://" in value:
        return value
    value = os.path.expanduser(value)
    if not os.path.isabs(value):
        raise ConfigError(f"{name} must be an absolute path (Airflow's processes do not "
                          f"share a working directory), got {value!r}")
    return os.path.normpath(value)


def _hparams_json(text: str) -> dict:
    try:
        hparams = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"MOVIEREC_HPARAMS is not valid JSON: {e}") from e
    if not isinstance(hparams, dict):
        raise ConfigError(f"MOVIEREC_HPARAMS must be a JSON object, got {text!r}")
    return hparams


def pipeline_config_from_env(environ: Mapping[str, str]):
    """The PipelineConfig that the MOVIEREC_* variables of `environ` describe, built by
    configs.from_options; ConfigError ('MOVIEREC_X: <from_options' message>') if one is
    bad."""
    from pipeline import configs

    base = {"data_dir": _absolute_dir(environ, "MOVIEREC_DATA_DIR", uri=True),
            "output_dir": _absolute_dir(environ, "MOVIEREC_OUTPUT_DIR"),
            # the DAG's id is the pipeline's name: `movierec`, also in a shared metadata
            # database, unless MOVIEREC_PIPELINE_NAME says otherwise
            "pipeline_name": configs.PIPELINE_NAME}
    given: dict[str, tuple[str, Any]] = {}  # variable -> (option, value)
    for variable, option in SETTINGS:
        text = environ.get(variable, "").strip()
        if text:
            given[variable] = (option, _hparams_json(text) if option == "hparams" else text)
    try:
        return configs.from_options({**base, **dict(given.values())}, local_data=True)
    except UserError as e:
        raise _config_error(e, base, given) from e


def _config_error(error: UserError, base: dict, given: dict) -> ConfigError:
    """`error` of from_options named by the variable it is about: the one that, alone with
    the two directories, fails the same way (the directories when they alone do)."""
    from pipeline import configs

    message = str(error).splitlines()[0]

    def fails_alike(options: dict) -> bool:
        try:
            configs.from_options({**base, **options}, local_data=True)
        except UserError as e:
            return str(e).splitlines()[0] == message
        return False

    if fails_alike({}):
        names = ["MOVIEREC_DATA_DIR"]
    else:
        names = next(([variable] for variable, (option, value) in given.items()
                      if fails_alike({option: value})), list(given) or ["MOVIEREC_*"])
    return ConfigError(f"{', '.join(names)}: {message}")


def dag_settings_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """Keyword arguments of airflow.models.DAG: schedule, start_date, catchup, ..."""
    schedule: str | None = environ.get("MOVIEREC_SCHEDULE", "").strip() or DEFAULT_SCHEDULE
    if schedule.lower() == "none":
        schedule = None
    text = environ.get("MOVIEREC_START_DATE", "").strip() or DEFAULT_START_DATE
    try:
        start = datetime.datetime.fromisoformat(text)
    except ValueError as e:
        raise ConfigError(f"MOVIEREC_START_DATE must be an ISO date such as 2025-01-01, "
                          f"got {text!r}") from e
    if start.tzinfo is None:
        start = start.replace(tzinfo=datetime.timezone.utc)
    retries = _count(environ, "MOVIEREC_RETRIES", DEFAULT_RETRIES, int)
    retry_delay = _count(environ, "MOVIEREC_RETRY_DELAY", DEFAULT_RETRY_DELAY, float)
    return {"schedule": schedule, "start_date": start, "catchup": False,
            "max_active_runs": 1, "tags": ["movierec", "tfx"],
            "default_args": {"retries": retries,
                             "retry_delay": datetime.timedelta(seconds=retry_delay)},
            "description": "MovieLens -> TFRS recommender (TFX pipeline)"}


def _count(environ: Mapping[str, str], name: str, default, kind):
    """A number >= 0 of `kind` (int or float) from `environ`, `default` when unset."""
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = -1
    if not (value >= 0 and math.isfinite(value)):  # also refuses nan and inf
        what = "a whole number" if kind is int else "a number of seconds"
        raise ConfigError(f"{name} must be {what} >= 0, got {text!r}")
    return value


def preload() -> None:
    """Imports what building the DAG imports (PRELOAD_MODULES), without building it and
    without running anything of TensorFlow: processes forked afterwards (Airflow's DAG
    file processors, the LocalExecutor's task processes) then parse the DAG file in well
    under a second, and each starts TensorFlow's runtime of its own."""
    import importlib

    for name in PRELOAD_MODULES:
        importlib.import_module(name)


def build_dag(environ: Mapping[str, str] | None = None):
    """The Airflow DAG of the movierec pipeline for the settings in `environ`."""
    environ = os.environ if environ is None else environ
    config = pipeline_config_from_env(environ)
    dag_settings = dag_settings_from_env(environ)

    from tfx.orchestration.airflow.airflow_dag_runner import (AirflowDagRunner,
                                                              AirflowPipelineConfig)

    from pipeline.pipeline import create_pipeline

    tfx_pipeline = create_pipeline(config)
    _adapt_to_legacy_drivers(tfx_pipeline)
    runner = AirflowDagRunner(AirflowPipelineConfig(airflow_dag_config=dag_settings))
    dag = runner.run(tfx_pipeline)
    add_output_lock(dag, config.output_dir, config.metadata_source, config.metadata_scope)
    return dag


# ---------------------------------------------------------------- the output-dir lock
def add_output_lock(dag, output_dir: str, metadata_source: str | None = None,
                    metadata_scope: str | None = None) -> None:
    """Wraps the DAG's tasks in a setup task that takes `output_dir`'s lock (before the
    roots) and a teardown task that gives it back (after the leaves, whatever their
    outcome); every other task checks the lock, and tidies what earlier attempts left in
    ML Metadata (`metadata_source`: the store, default OUT/metadata.sqlite;
    `metadata_scope`: the pipeline that is the DAG's in a shared store), before it
    starts."""
    check = functools.partial(
        _check_task, output_dir,
        metadata_source=metadata_source or os.path.join(output_dir, "metadata.sqlite"),
        metadata_scope=metadata_scope)
    from airflow.operators.python import PythonOperator

    tasks, roots, leaves = list(dag.tasks), list(dag.roots), list(dag.leaves)
    lock = PythonOperator(task_id=LOCK_TASK, dag=dag,
                          python_callable=functools.partial(_lock_task, output_dir),
                          doc_md=f"Takes the lock of {output_dir} for this DAG run.")
    unlock = PythonOperator(task_id=UNLOCK_TASK, dag=dag,
                            python_callable=functools.partial(_unlock_task, output_dir),
                            doc_md=f"Gives back the lock of {output_dir}.")
    unlock.as_teardown(setups=lock)  # runs after failures too; not the DAG run's state
    lock >> roots
    leaves >> unlock
    for task in tasks:
        if hasattr(task, "_pre_execute_hook"):  # BaseOperator's pre_execute= argument
            task._pre_execute_hook = _chained(check, task._pre_execute_hook)


def _chained(first: Callable, then: Callable | None) -> Callable:
    if then is None:
        return first

    def hook(context):
        first(context)
        then(context)

    return hook


def _run_of(context) -> tuple[str, str, int | None]:
    """(dag id, run id, pid to watch): a task not supervised by a LocalTaskJob (no job id:
    `airflow dags test` / `tasks test`) runs its DAG run inside this process, which the
    holder then outlives by no more than a poll."""
    dag_run, ti = context["dag_run"], context["ti"]
    in_process = getattr(ti, "job_id", None) is None
    return dag_run.dag_id, dag_run.run_id, os.getpid() if in_process else None


def _lock_task(output_dir: str, **context) -> None:
    dag_id, run_id, watch_pid = _run_of(context)
    lease = ensure_lock(output_dir, dag_id, run_id, watch_pid=watch_pid,
                        run_active=_dag_run_active)
    print(f"{output_dir} is locked for {dag_id} {run_id} (holder pid {lease['pid']})")


def _check_task(output_dir: str, context, metadata_source: str,
                metadata_scope: str | None) -> None:
    dag_id, run_id, watch_pid = _run_of(context)
    ensure_lock(output_dir, dag_id, run_id, watch_pid=watch_pid,
                run_active=_dag_run_active)
    _close_earlier_attempts(metadata_source, metadata_scope, context["ti"])


def _close_earlier_attempts(source: str, scope: str | None, ti) -> int:
    """Before a component task runs its component: what an earlier attempt of the task in
    this DAG run left in ML Metadata (its process was killed, or it failed) is set aside
    (metadata.set_aside_attempt: its open execution CANCELED, so that this attempt is an
    execution of its own), and executions of the component that earlier DAG runs left open
    are closed, as `movierec run` does after a killed run. Safe while the lock is held:
    only one attempt of a task runs at a time, and only one DAG run is active. Returns how
    many executions were set aside or closed. `source`: the ML Metadata store (a SQLite
    path or a mysql:// URI); `scope`: the DAG's pipeline in a shared store."""
    from pipeline import metadata

    attempt = (f"Airflow task {ti.task_id} of {ti.run_id} ended before this execution "
               f"finished; try {ti.try_number} runs it again")
    set_aside = metadata.set_aside_attempt(source, ti.dag_id, ti.run_id, ti.task_id, attempt)
    closed = metadata.close_interrupted(
        source, pipeline_name=scope, component=ti.task_id,
        reason=f"the DAG run was stopped before this execution finished (found by "
               f"{ti.run_id})")
    if set_aside:
        print(f"{ti.task_id}: an earlier attempt of this task left {set_aside} "
              f"execution(s) in ML Metadata: set aside (open ones marked canceled); try "
              f"{ti.try_number} is an execution of its own")
    if closed:
        print(f"{ti.task_id}: {closed} unfinished execution(s) of earlier DAG runs marked "
              f"canceled in ML Metadata")
    return set_aside + closed


def _unlock_task(output_dir: str, **context) -> None:
    dag_id, run_id, _ = _run_of(context)
    released = release_lock(output_dir, dag_id, run_id)
    print(f"{output_dir}: lock of {dag_id} {run_id} "
          f"{'released' if released else 'was not held (nothing to release)'}")


def read_lease(output_dir: str) -> dict | None:
    """The lease of `output_dir` (who holds its lock for which DAG run), or None."""
    try:
        with open(os.path.join(output_dir, LEASE_FILE)) as f:
            lease = json.load(f)
    except (OSError, ValueError):
        return None
    return lease if isinstance(lease, dict) and "pid" in lease else None


def _names(lease: dict | None, dag_id: str, run_id: str) -> bool:
    return bool(lease) and (lease.get("dag_id"), lease.get("run_id")) == (dag_id, run_id)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) holds nothing
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def holder_alive(lease: dict) -> bool | None:
    """Whether the lease's holder process runs (None: it is on another host)."""
    if lease.get("host") != socket.gethostname():
        return None
    pid = int(lease["pid"])
    if not _process_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
    except OSError:
        return True  # no /proc: the pid is alive, take it to be the holder
    return HOLDER_MARK in argv and str(lease.get("run_id")) in argv


def ensure_lock(output_dir: str, dag_id: str, run_id: str, *, watch_pid: int | None = None,
                run_active: Callable[[str, str], bool | None] | None = None,
                env: Mapping[str, str] | None = None) -> dict:
    """Makes sure that a holder holds `output_dir`'s lock for the DAG run (dag_id, run_id),
    starting one if none does; returns the lease. A lease of another DAG run whose holder
    is alive is stale when `run_active` says that run is over: its holder is stopped.
    Raises OutputBusy when a movierec run, or another DAG run still active, has it."""
    lease = read_lease(output_dir)
    if lease:
        alive = holder_alive(lease)
        if _names(lease, dag_id, run_id) and alive is not False:
            return lease
        if alive is not False and not _names(lease, dag_id, run_id):
            active = True if run_active is None else run_active(lease["dag_id"],
                                                                 lease["run_id"])
            if active is not False or alive is None:
                raise OutputBusy(
                    f"DAG run {lease['run_id']} of {lease['dag_id']} is using {output_dir} "
                    f"(lock holder pid {lease['pid']} on {lease.get('host')}); wait for it "
                    f"or mark it failed")
            _stop_holder(output_dir, lease)  # stale: the DAG run it was for is over
    if _start_holder(output_dir, dag_id, run_id, watch_pid, env):
        return read_lease(output_dir) or {}
    for _ in range(20):  # a task of this DAG run running alongside may have just won
        lease = read_lease(output_dir)
        if _names(lease, dag_id, run_id) and holder_alive(lease) is not False:
            return lease
        time.sleep(0.1)
    raise OutputBusy(output_lock.busy_message(output_dir, "MOVIEREC_OUTPUT_DIR"))


def release_lock(output_dir: str, dag_id: str, run_id: str) -> bool:
    """Stops the holder of (dag_id, run_id)'s lock on `output_dir`, if there is one; True
    if the lock was held for that run."""
    lease = read_lease(output_dir)
    if not _names(lease, dag_id, run_id):
        return False
    if holder_alive(lease):
        _stop_holder(output_dir, lease)
    else:
        _remove_lease(output_dir, int(lease["pid"]))
    return True


def _stop_holder(output_dir: str, lease: dict) -> None:
    """SIGTERM to the lease's holder (SIGKILL if it lingers), then the lease is gone."""
    pid = int(lease["pid"])
    for sig, seconds in ((signal.SIGTERM, HOLDER_STOP_SECONDS), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and holder_alive(lease):
            _reap()
            time.sleep(0.05)
        if not holder_alive(lease):
            break
    _reap()
    _remove_lease(output_dir, pid)


def _reap() -> None:
    for proc in list(_HOLDERS):
        if proc.poll() is not None:
            _HOLDERS.remove(proc)


def _remove_lease(output_dir: str, pid: int) -> None:
    """Removes the lease if it is still the one of holder `pid` (a newer holder's stays)."""
    lease = read_lease(output_dir)
    if lease and int(lease["pid"]) == pid:
        try:
            os.unlink(os.path.join(output_dir, LEASE_FILE))
        except FileNotFoundError:
            pass


def _start_holder(output_dir: str, dag_id: str, run_id: str, watch_pid: int | None,
                  env: Mapping[str, str] | None = None) -> bool:
    """Starts a holder process; True once it holds the lock, False if it is taken."""
    root = str(pathlib.Path(__file__).resolve().parent.parent)  # `pipeline`'s parent
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]]
                                                  if env.get("PYTHONPATH") else []))
    logs = os.path.join(output_dir, "logs")
    try:
        os.makedirs(logs, exist_ok=True)
        log = open(os.path.join(logs, "airflow-lock.log"), "a")
    except OSError as e:
        raise UserError(f"cannot write output directory {output_dir}: {e.strerror}") from e
    with log:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from pipeline.airflow_dag import "
             "_holder_main; sys.exit(_holder_main(sys.argv[1:]))",
             HOLDER_MARK, output_dir, dag_id, run_id, str(watch_pid or 0)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env,
            start_new_session=True, text=True)  # out of the task's process group
    _HOLDERS.append(proc)
    ready, _, _ = select.select([proc.stdout], [], [], 120)
    answer = proc.stdout.readline().strip() if ready else ""
    proc.stdout.close()
    if answer == "locked":
        return True
    if answer == "busy":
        proc.wait()
        _reap()
        return False
    proc.kill()
    proc.wait()
    raise RuntimeError(f"the lock holder of {output_dir} did not start (answered "
                       f"{answer!r}; see {logs}/airflow-lock.log)")


def _dag_run_active(dag_id: str, run_id: str) -> bool | None:
    """Whether that DAG run is queued or running in Airflow's metadata database (None:
    the database cannot be read)."""
    state = _dag_run_state(dag_id, run_id)
    return None if state is _UNKNOWN else state in _ACTIVE_STATES


_UNKNOWN = object()


def _dag_run_state(dag_id: str, run_id: str):
    """The DAG run's state (a string), None if there is no such run, _UNKNOWN if the
    database cannot be read."""
    try:
        from airflow.models.dagrun import DagRun
        from airflow.utils.session import create_session

        with create_session() as session:
            state = session.query(DagRun.state).filter(
                DagRun.dag_id == dag_id, DagRun.run_id == run_id).scalar()
    except Exception as e:  # noqa: BLE001 - keep holding; try again later
        _log(f"cannot read the state of {dag_id} {run_id}: {e!r}")
        return _UNKNOWN
    return None if state is None else str(getattr(state, "value", state))


def _log(message: str) -> None:
    print(f"{datetime.datetime.now().isoformat(timespec='seconds')} [{os.getpid()}] "
          f"{message}", file=sys.stderr, flush=True)


def _holder_main(argv: list) -> int:
    """The holder process: flock OUT/.movierec.lock, write the lease, say "locked" (or
    "busy") on stdout, then hold the lock until told to stop (SIGTERM) or until the DAG
    run is over."""
    _, output_dir, dag_id, run_id, watch = argv
    watch_pid = int(watch) or None
    handle = output_lock.try_acquire(output_dir)
    if handle is None:
        print("busy", flush=True)
        return 1

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    reason = "stopped"
    try:
        lease = {"holder": HOLDER_MARK, "dag_id": dag_id, "run_id": run_id,
                 "pid": os.getpid(), "host": socket.gethostname(),
                 "watch_pid": watch_pid,
                 "since": datetime.datetime.now(datetime.timezone.utc).isoformat()}
        tmp = os.path.join(output_dir, f"{LEASE_FILE}.{os.getpid()}")
        with open(tmp, "w") as f:
            json.dump(lease, f)
        os.replace(tmp, os.path.join(output_dir, LEASE_FILE))
        _log(f"holding {output_dir} for {dag_id} {run_id}")
        print("locked", flush=True)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        while True:
            time.sleep(HOLDER_POLL_SECONDS)
            if watch_pid:
                if not _process_alive(watch_pid):
                    reason = f"process {watch_pid} that ran the DAG run has ended"
                    break
                continue
            state = _dag_run_state(dag_id, run_id)
            if state is not _UNKNOWN and state not in _ACTIVE_STATES:
                reason = f"the DAG run is {state or 'gone'}"
                break
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the cleanup finish
        _remove_lease(output_dir, os.getpid())
        output_lock.release(handle)
        _log(f"released {output_dir} ({reason})")
    return 0


def _adapt_to_legacy_drivers(tfx_pipeline) -> None:
    """TFX's Airflow runner launches nodes with TFX's legacy drivers, which differ from the
    local runner's in two ways that matter to this pipeline; both are evened out here.

    - The ResolverDriver resolves every input channel to all matching artifacts of all
      runs. For a channel from a node of this pipeline (the baseline resolver's `candidate`,
      the Trainer's model) that means every model ever trained, not this run's, so the
      baseline would never be found. Such channels are resolved within the current run,
      as other components' inputs are.
    - Drivers name each output artifact '<output key>:<run id>', and ML Metadata wants
      (type, name) unique: two components with an output of the same key and type
      (Evaluator's and RetrievalEvaluator's ModelBlessing `blessing`) cannot both publish
      in one run. Such components name their artifacts
      '<component id>.<output key>:<run id>'.
    - For the same reason a retried task (see "Retries") cannot name its outputs as the
      earlier attempt named the ones it registered before it was killed (names of
      artifacts cannot change): a name already taken gets '@attempt-<n>' (n = 2, 3 ...).
    """
    from tfx.dsl.components.base import base_component
    from tfx.dsl.components.common import resolver

    components = [c for c in tfx_pipeline.components
                  if isinstance(c, base_component.BaseComponent)]
    outputs = collections.Counter((key, channel.type_name) for c in components
                                  for key, channel in c.outputs.items())
    for node in tfx_pipeline.components:
        if isinstance(node, resolver.Resolver):
            node.driver_class = _run_scoped_upstream_inputs(node.driver_class)
    for c in components:
        shared_key = any(outputs[(key, channel.type_name)] > 1
                         for key, channel in c.outputs.items())
        c.driver_class = _named_outputs(c.driver_class, by_component=shared_key)


def _named_outputs(driver_class, by_component: bool):
    """The driver with output names ML Metadata accepts: '<component id>.<name>' when
    `by_component` (an output key and type another component has too), and, when an
    earlier attempt of the task took that name, '<name>@attempt-<n>'."""
    from pipeline import metadata

    class Driver(driver_class):
        def _prepare_output_artifacts(self, input_artifacts, output_dict, exec_properties,
                                      execution_id, pipeline_info, component_info):
            result = super()._prepare_output_artifacts(
                input_artifacts, output_dict, exec_properties, execution_id,
                pipeline_info, component_info)
            store = self._metadata_handle.store
            for artifacts in result.values():
                for artifact in artifacts:
                    if by_component:
                        artifact.name = f"{component_info.component_id}.{artifact.name}"
                    name, attempt = artifact.name, 1
                    while store.get_artifact_by_type_and_name(artifact.type_name,
                                                              artifact.name):
                        attempt += 1
                        artifact.name = f"{name}{metadata.ATTEMPT_MARK}{attempt}"
            return result

    kind = "ComponentNamed" if by_component else "UniquelyNamed"
    Driver.__name__ = Driver.__qualname__ = f"{kind}{driver_class.__name__}"
    return Driver


def _run_scoped_upstream_inputs(driver_class):
    from tfx import types

    class Driver(driver_class):
        def _build_input_dict(self, pipeline_info, input_channels):
            upstream = {key for key, channel in input_channels.items()
                        if isinstance(channel, types.OutputChannel)}
            result = super()._build_input_dict(
                pipeline_info, {k: c for k, c in input_channels.items() if k not in upstream})
            for key in upstream:
                channel = input_channels[key]
                result[key] = self._metadata_handle.search_artifacts(
                    artifact_name=channel.output_key, pipeline_info=pipeline_info,
                    producer_component_id=channel.producer_component_id)
            return result

    Driver.__name__ = Driver.__qualname__ = f"RunScoped{driver_class.__name__}"
    return Driver


def __getattr__(name: str):
    # `from pipeline.airflow_dag import DAG` builds the DAG on first use, so that importing
    # this module for its functions needs neither Airflow nor the MOVIEREC_* settings.
    if name == "DAG":
        global DAG
        try:
            DAG = build_dag()
        except AttributeError as e:  # would read as "cannot import name 'DAG'"
            raise RuntimeError(f"building the movierec DAG failed: {e!r}") from e
        return DAG
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ != "pipeline.airflow_dag":
    # Loaded by Airflow as a file of the dags folder (a copy or a symlink of this module):
    # a module-level DAG for the DagBag to find.
    DAG = build_dag()

"""The pipeline as an Airflow DAG (pipeline/airflow_dag.py): its settings from the
environment, and one real run through Airflow — a fresh AIRFLOW_HOME with a SQLite
metadata DB, a dags folder holding the one-line shim a user would write, tiny
MovieLens-shaped data, and `airflow dags test` in a subprocess."""

import contextlib
import datetime
import io
import json
import os
import pathlib
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import types

import pytest

import pipeline
from pipeline import airflow_dag, cli, output_lock
from pipeline.errors import UserError

REPO = pathlib.Path(__file__).resolve().parent.parent
SHIM = "from pipeline.airflow_dag import DAG\n"
RUN_DATE, NEXT_DATE, FAILING_DATE = "2025-01-02", "2025-01-03", "2025-01-04"
LOCK_TASKS = {airflow_dag.LOCK_TASK, airflow_dag.UNLOCK_TASK}
FAST = {"MOVIEREC_HPARAMS": json.dumps({"epochs": 3, "batch_size": 256}),
        "MOVIEREC_RMSE_UPPER_BOUND": "2.0"}


def _settings(data_dir, output_dir, **extra):
    return {"MOVIEREC_DATA_DIR": str(data_dir), "MOVIEREC_OUTPUT_DIR": str(output_dir),
            **extra}


# ------------------------------------------------------------------ settings (no Airflow)
def test_importing_the_module_needs_neither_airflow_nor_tensorflow():
    """Importing it (as pytest does, or for its functions) must not start Airflow (which
    would write ~/airflow) nor need the MOVIEREC_* settings; the DAG is built on use."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOVIEREC_")}
    code = ("import sys, pipeline.airflow_dag\n"
            "print(sorted(m for m in ('airflow', 'tensorflow', 'tfx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_pipeline_config_from_env(ml100k_dir, tmp_path):
    config = airflow_dag.pipeline_config_from_env(
        _settings(ml100k_dir, tmp_path / "out", **FAST))
    assert config.data_dir == str(ml100k_dir) and config.layout == "ml-100k"
    assert config.output_dir == str(tmp_path / "out")
    assert config.hparams == {"epochs": 3, "batch_size": 256}
    assert config.rmse_upper_bound == 2.0


def test_pipeline_config_defaults(ml100k_dir, tmp_path):
    from pipeline import configs

    config = airflow_dag.pipeline_config_from_env(
        _settings(ml100k_dir, tmp_path, MOVIEREC_HPARAMS="", MOVIEREC_RMSE_UPPER_BOUND=" ",
                  **{variable: "" for variable, _ in airflow_dag.SETTINGS
                     if variable not in ("MOVIEREC_HPARAMS", "MOVIEREC_RMSE_UPPER_BOUND")}))
    defaults = configs.PipelineConfig("", "")
    assert config.hparams == {}
    assert config.rmse_upper_bound == defaults.rmse_upper_bound
    assert (config.split, config.seed) == (defaults.split, defaults.seed)
    for field in ("timestamp_buckets", "beam_pipeline_args", "beam_workers", "warm_start",
                  "enable_cache", "tune_trials"):
        assert getattr(config, field) == getattr(defaults, field), field


def test_every_setting_of_a_scheduled_run(ml100k_dir, tmp_path):
    config = airflow_dag.pipeline_config_from_env(_settings(
        ml100k_dir, tmp_path, MOVIEREC_SPLIT="time", MOVIEREC_SEED="7",
        MOVIEREC_HPARAMS='{"epochs": "3", "dropout": 0.1, "logq_correction": "no"}',
        MOVIEREC_BATCH_SIZE="128", MOVIEREC_LEARNING_RATE="0.01",
        MOVIEREC_EMBEDDING_DIM="16", MOVIEREC_OPTIMIZER="sgd", MOVIEREC_INDEX="brute_force",
        MOVIEREC_TIMESTAMP_BUCKETS="64", MOVIEREC_RMSE_UPPER_BOUND="1.2",
        MOVIEREC_BEAM_PIPELINE_ARGS=" --direct_num_workers=1  --runner=DirectRunner ",
        MOVIEREC_BEAM_WORKERS="3", MOVIEREC_WARM_START="true", MOVIEREC_ENABLE_CACHE="0"))
    assert (config.split, config.seed) == ("time", 7)
    assert config.hparams == {"epochs": 3, "dropout": 0.1, "logq_correction": False,
                              "batch_size": 128, "learning_rate": 0.01,
                              "embedding_dim": 16, "optimizer": "sgd",
                              "index": "brute_force"}
    assert (config.timestamp_buckets, config.rmse_upper_bound) == (64, 1.2)
    assert config.beam_pipeline_args == ("--direct_num_workers=1", "--runner=DirectRunner")
    assert (config.beam_workers, config.warm_start, config.enable_cache) == (3, True, False)


def test_every_variable_is_documented():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Scheduling with Airflow"):]
    section = section[:section.index("\n## ", 3)]
    for variable in ["MOVIEREC_DATA_DIR", "MOVIEREC_OUTPUT_DIR", "MOVIEREC_SCHEDULE",
                     "MOVIEREC_START_DATE", *(v for v, _ in airflow_dag.SETTINGS)]:
        assert f"``{variable}``" in airflow_dag.__doc__, variable
        assert f"`{variable}`" in section, variable


@pytest.mark.parametrize("change, message", [
    ({"MOVIEREC_DATA_DIR": None}, "MOVIEREC_DATA_DIR is not set"),
    ({"MOVIEREC_DATA_DIR": "/nonexistent/ml-100k"}, "MOVIEREC_DATA_DIR: data directory "
                                                    "does not exist"),
    ({"MOVIEREC_DATA_DIR": "."}, "MOVIEREC_DATA_DIR must be an absolute path"),
    ({"MOVIEREC_OUTPUT_DIR": None}, "MOVIEREC_OUTPUT_DIR is not set"),
    ({"MOVIEREC_OUTPUT_DIR": "output"}, "MOVIEREC_OUTPUT_DIR must be an absolute path"),
    ({"MOVIEREC_HPARAMS": "{epochs: 3}"}, "MOVIEREC_HPARAMS is not valid JSON"),
    ({"MOVIEREC_HPARAMS": "[3]"}, "MOVIEREC_HPARAMS must be a JSON object"),
    ({"MOVIEREC_HPARAMS": '{"epoch": 3}'}, "MOVIEREC_HPARAMS: unknown hyperparameters: "
                                           "epoch"),
    ({"MOVIEREC_HPARAMS": '{"epochs": "3.5"}'}, "MOVIEREC_HPARAMS: hparam epochs must be "
                                                "an integer, got '3.5'"),
    ({"MOVIEREC_RMSE_UPPER_BOUND": "low"}, "MOVIEREC_RMSE_UPPER_BOUND: rmse_upper_bound "
                                           "must be a number, got 'low'"),
    ({"MOVIEREC_SPLIT": "fold"}, "MOVIEREC_SPLIT: split must be"),
    ({"MOVIEREC_SEED": "x"}, "MOVIEREC_SEED: seed must be an integer, got 'x'"),
    ({"MOVIEREC_EPOCHS": "0.5"}, "MOVIEREC_EPOCHS: hparam epochs must be an integer"),
    ({"MOVIEREC_INDEX": "annoy"}, "MOVIEREC_INDEX: index must be 'brute_force' or "
                                  "'scann'"),
    ({"MOVIEREC_TIMESTAMP_BUCKETS": "0"}, "MOVIEREC_TIMESTAMP_BUCKETS: timestamp_buckets "
                                          "must be at least 2"),
    ({"MOVIEREC_BEAM_WORKERS": "-1"}, "MOVIEREC_BEAM_WORKERS: beam_workers must be 0 or "
                                      "more"),
    ({"MOVIEREC_WARM_START": "maybe"}, "MOVIEREC_WARM_START: warm_start must be true or "
                                       "false, got 'maybe'"),
    ({"MOVIEREC_ENABLE_CACHE": "2"}, "MOVIEREC_ENABLE_CACHE: enable_cache must be true or "
                                     "false, got '2'"),
    ({"MOVIEREC_SPLIT": "bogus", "MOVIEREC_DATA_DIR": "/nonexistent/x"},
     "MOVIEREC_SPLIT: split must be"),  # the variable the message is about
])
def test_bad_settings_fail_naming_the_variable(ml100k_dir, tmp_path, change, message):
    environ = _settings(ml100k_dir, tmp_path, **FAST)
    for key, value in change.items():
        if value is None:
            del environ[key]
        else:
            environ[key] = value
    with pytest.raises(airflow_dag.ConfigError) as raised:
        airflow_dag.pipeline_config_from_env(environ)
    assert str(raised.value).startswith(message)


def test_dag_settings_defaults():
    settings = airflow_dag.dag_settings_from_env({})
    assert settings["schedule"] == "@daily"
    assert settings["start_date"] == datetime.datetime(2025, 1, 1,
                                                       tzinfo=datetime.timezone.utc)
    assert settings["catchup"] is False
    assert settings["max_active_runs"] == 1
    assert settings["default_args"] == {"retries": 1,
                                        "retry_delay": datetime.timedelta(seconds=60)}


def test_retries():
    def default_args(**environ):
        return airflow_dag.dag_settings_from_env(environ)["default_args"]

    assert default_args(MOVIEREC_RETRIES="3", MOVIEREC_RETRY_DELAY="2.5") == {
        "retries": 3, "retry_delay": datetime.timedelta(seconds=2.5)}
    assert default_args(MOVIEREC_RETRIES="0", MOVIEREC_RETRY_DELAY=" ")["retries"] == 0
    for name, value in (("MOVIEREC_RETRIES", "-1"), ("MOVIEREC_RETRIES", "1.5"),
                        ("MOVIEREC_RETRIES", "many"), ("MOVIEREC_RETRY_DELAY", "-5"),
                        ("MOVIEREC_RETRY_DELAY", "nan"), ("MOVIEREC_RETRY_DELAY", "inf")):
        with pytest.raises(airflow_dag.ConfigError, match=f"^{name} must be .* >= 0, "
                                                          f"got '{value}'$"):
            default_args(**{name: value})


@pytest.mark.parametrize("value, expected", [
    ("@hourly", "@hourly"), ("0 3 * * 1-5", "0 3 * * 1-5"), ("none", None), ("None", None),
    ("", "@daily")])
def test_schedule(value, expected):
    assert airflow_dag.dag_settings_from_env(
        {"MOVIEREC_SCHEDULE": value})["schedule"] == expected


def test_start_date():
    utc, plus2 = datetime.timezone.utc, datetime.timezone(datetime.timedelta(hours=2))

    def start(value):
        return airflow_dag.dag_settings_from_env({"MOVIEREC_START_DATE": value})[
            "start_date"]

    assert start("2024-06-30") == datetime.datetime(2024, 6, 30, tzinfo=utc)
    assert start("2024-06-30T04:30") == datetime.datetime(2024, 6, 30, 4, 30, tzinfo=utc)
    assert start("2024-06-30T04:30+02:00") == datetime.datetime(2024, 6, 30, 4, 30,
                                                                tzinfo=plus2)
    with pytest.raises(airflow_dag.ConfigError, match="MOVIEREC_START_DATE"):
        start("30/06/2024")


def test_the_dag_attribute_reports_a_missing_setting(monkeypatch):
    monkeypatch.delenv("MOVIEREC_DATA_DIR", raising=False)
    with pytest.raises(airflow_dag.ConfigError, match="MOVIEREC_DATA_DIR is not set"):
        airflow_dag.DAG  # noqa: B018 - what `from pipeline.airflow_dag import DAG` does


# ------------------------------------------------------------------- a real Airflow run
def _airflow_env(home, dags, data_dir, output_dir):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "MOVIEREC_"))}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        # importing TensorFlow + TFX takes longer than the default 30 s on a busy host
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "600",
        "TF_USE_LEGACY_KERAS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": os.pathsep.join([str(REPO)] + ([os.environ["PYTHONPATH"]]
                                                     if os.environ.get("PYTHONPATH")
                                                     else [])),
        **_settings(data_dir, output_dir, **FAST),
        # `dags test` would wait MOVIEREC_RETRY_DELAY and run a failing task again;
        # retries under the scheduler: tests/test_airflow_scheduler.py
        "MOVIEREC_RETRIES": "0",
    })
    return env


def _dags_test(run, date, env=None, while_running=None):
    """`airflow dags test movierec DATE` (one DAG run, tasks in-process); its exit code.
    The output goes to a log file in the run's directory; `while_running(process)` is
    called as soon as it has started."""
    log = run["root"] / f"dags-test-{date}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "airflow", "dags", "test", airflow_dag.DAG_ID, date],
            env=env or run["env"], cwd=run["root"], stdout=out, stderr=subprocess.STDOUT)
        try:
            if while_running:
                while_running(process)
            rc = process.wait(timeout=1800)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    run["logs"][date] = log
    return rc


class _Started(BaseException):
    """`movierec run` got past its lock: the stand-in for local_runner.run was called."""


@contextlib.contextmanager
def _no_pipeline():
    """`movierec run` in this process, but its local_runner.run raises _Started."""
    def run(config):
        raise _Started(config)

    fake = types.ModuleType("pipeline.local_runner")
    fake.run = run
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "pipeline.local_runner", fake)
        patch.setattr(pipeline, "local_runner", fake, raising=False)
        yield


def _movierec_run(data_dir, output_dir):
    """(exit status, stderr) of `movierec run` on OUT; 'started' if it got past its lock
    (the pipeline itself is not run)."""
    err = io.StringIO()
    with _no_pipeline(), contextlib.redirect_stderr(err), \
            contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = cli.main(["run", "--data-dir", str(data_dir), "--output-dir",
                           str(output_dir)])
        except _Started:
            rc = "started"
    return rc, err.getvalue().strip()


def _lock_is_free(output_dir) -> bool:
    """What `movierec run` checks: nobody holds OUT/.movierec.lock."""
    try:
        with output_lock.held(str(output_dir)):
            return True
    except UserError:
        return False


def _while_locked(run, data_dir):
    """While the DAG run runs: wait for its lease, then try `movierec run` on its OUT."""
    def check(process):
        deadline = time.monotonic() + 600
        while (lease := airflow_dag.read_lease(str(run["output"]))) is None:
            if process.poll() is not None or time.monotonic() > deadline:
                return
            time.sleep(0.5)
        run["lease"] = lease
        run["cli_during_run"] = _movierec_run(data_dir, run["output"])
        run["running_after_cli"] = process.poll() is None
        run["lease_after_cli"] = airflow_dag.read_lease(str(run["output"]))
    return check


def _stop_holders(*output_dirs):
    for output_dir in output_dirs:
        lease = airflow_dag.read_lease(str(output_dir))
        if lease and airflow_dag.holder_alive(lease):
            airflow_dag._stop_holder(str(output_dir), lease)

def _task_states(run, date):
    """(DAG run state, {task id: task instance state}) of the run of `date`, read from
    Airflow's metadata DB."""
    with contextlib.closing(sqlite3.connect(run["db"])) as db:
        runs = db.execute("SELECT run_id, state FROM dag_run WHERE dag_id = ? AND "
                          "run_id LIKE ?", (airflow_dag.DAG_ID, f"%{date}T%")).fetchall()
        assert len(runs) == 1, runs
        states = dict(db.execute(
            "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
            (airflow_dag.DAG_ID, runs[0][0])).fetchall())
    return runs[0][1], states


def _log_tail(run, date=RUN_DATE, lines=60):
    text = run["logs"][date].read_text(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def _versions(run):
    serving = run["output"] / "serving" / "movierec"
    return sorted(p.name for p in serving.iterdir()) if serving.is_dir() else []


def _execution_dirs(run):
    """pipeline/<component>/<output>/<execution id>: one per executed (not cached) run of a
    component."""
    return sorted(str(p.relative_to(run["output"]))
                  for p in run["output"].glob("pipeline/*/*/*") if p.name.isdigit())


@pytest.fixture(scope="module")
def airflow_run(tmp_path_factory, ml100k_dir):
    """A fresh Airflow (SQLite DB migrated, no examples), a dags folder with the shim, and
    one `airflow dags test` run of the DAG."""
    root = tmp_path_factory.mktemp("airflow")
    home, dags, output_dir = root / "home", root / "dags", root / "output"
    home.mkdir()
    dags.mkdir()
    (dags / "movierec.py").write_text(SHIM)
    run = {"root": root, "db": home / "airflow.db", "output": output_dir, "logs": {},
           "env": _airflow_env(home, dags, ml100k_dir, output_dir)}
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=run["env"],
                   cwd=root, check=True, capture_output=True)
    try:
        run["rc"] = _dags_test(run, RUN_DATE, while_running=_while_locked(run, ml100k_dir))
        yield run
    finally:
        _stop_holders(output_dir, *(root / name for name in (
            "failing-output", "holder-output", "stale-output")))


def test_airflow_dags_test_succeeds(airflow_run):
    assert airflow_run["rc"] == 0, _log_tail(airflow_run)


def test_every_pipeline_component_ran_as_a_successful_task(airflow_run):
    from pipeline.pipeline import create_pipeline

    dag_run_state, states = _task_states(airflow_run, RUN_DATE)
    assert dag_run_state == "success", _log_tail(airflow_run)
    assert states and all(s == "success" for s in states.values()), states

    config = airflow_dag.pipeline_config_from_env(airflow_run["env"])
    components = {c.id for c in create_pipeline(config).components}
    assert {"MovieLensExampleGen", "StatisticsGen", "ExampleValidator", "Transform",
            "Trainer", "Evaluator", "RetrievalEvaluator", "Pusher"} <= components
    assert set(states) == components | LOCK_TASKS


def test_a_model_was_pushed(airflow_run):
    versions = _versions(airflow_run)
    assert len(versions) == 1 and versions[0].isdigit(), (versions, _log_tail(airflow_run))
    serving = airflow_run["output"] / "serving" / "movierec"
    assert (serving / versions[0] / "saved_model.pb").is_file()
    assert (airflow_run["output"] / "metadata.sqlite").is_file()


def test_the_next_scheduled_run_reuses_the_cache(airflow_run):
    """The next day's run on unchanged data: every task succeeds (the evaluators' baseline
    resolves under Airflow's drivers), every component is a cache hit, nothing new is
    pushed."""
    versions, executions = _versions(airflow_run), _execution_dirs(airflow_run)
    assert versions and executions, "the first run pushed nothing"
    rc = _dags_test(airflow_run, NEXT_DATE)
    assert rc == 0, _log_tail(airflow_run, NEXT_DATE)
    dag_run_state, states = _task_states(airflow_run, NEXT_DATE)
    assert dag_run_state == "success" and set(states.values()) == {"success"}, states
    assert _execution_dirs(airflow_run) == executions  # no component executed again
    assert _versions(airflow_run) == versions


# ------------------------------------------------------------ the output-directory lock
def test_movierec_run_refuses_while_the_dag_runs(airflow_run):
    """While `airflow dags test` was running the pipeline, `movierec run` on the same
    output directory refused with its usual message and wrote nothing."""
    assert "lease" in airflow_run, ("no lease appeared during the DAG run",
                                    _log_tail(airflow_run))
    lease = airflow_run["lease"]
    assert lease["dag_id"] == airflow_dag.DAG_ID and RUN_DATE in lease["run_id"]
    rc, err = airflow_run["cli_during_run"]
    assert airflow_run["running_after_cli"], "the DAG run ended before the check"
    assert (rc, err) == (2, f"movierec: error: another movierec run is using "
                            f"{airflow_run['output']}; wait for it or choose another "
                            f"--output-dir")
    assert airflow_run["lease_after_cli"] == lease  # the DAG run kept its lock
    assert not list(airflow_run["output"].glob("logs/run-*.log"))


def test_the_lock_is_free_after_the_dag_run(airflow_run):
    assert airflow_run["rc"] == 0, _log_tail(airflow_run)
    _, states = _task_states(airflow_run, RUN_DATE)
    assert states[airflow_dag.UNLOCK_TASK] == "success"
    assert airflow_dag.read_lease(str(airflow_run["output"])) is None
    assert airflow_dag.holder_alive(airflow_run["lease"]) is False
    assert _lock_is_free(airflow_run["output"])


def test_a_failing_task_releases_the_lock(airflow_run, ml100k_dir):
    """Data that parses (the layout is there) but fails in ExampleGen: the DAG run fails,
    the tasks after ExampleGen do not run, and the teardown task releases the lock."""
    data_dir = airflow_run["root"] / "bad-data"
    output_dir = airflow_run["root"] / "failing-output"
    shutil.copytree(ml100k_dir, data_dir)
    lines = (data_dir / "u.data").read_text().splitlines(keepends=True)
    user, movie, _, stamp = lines[7].split("\t")
    lines[7] = "\t".join([user, movie, "9", stamp])
    (data_dir / "u.data").write_text("".join(lines))
    env = {**airflow_run["env"], "MOVIEREC_DATA_DIR": str(data_dir),
           "MOVIEREC_OUTPUT_DIR": str(output_dir)}

    rc = _dags_test(airflow_run, FAILING_DATE, env=env)
    assert rc != 0, _log_tail(airflow_run, FAILING_DATE)
    dag_run_state, states = _task_states(airflow_run, FAILING_DATE)
    assert dag_run_state == "failed"
    assert states[airflow_dag.LOCK_TASK] == "success"
    assert states["MovieLensExampleGen"] == "failed", states
    assert states["Trainer"] == states["Pusher"] == "upstream_failed", states
    assert states[airflow_dag.UNLOCK_TASK] == "success", _log_tail(airflow_run,
                                                                   FAILING_DATE)
    assert "rating '9' outside 1..5" in airflow_run["logs"][FAILING_DATE].read_text()
    assert airflow_dag.read_lease(str(output_dir)) is None
    assert _lock_is_free(output_dir)


def _set_dag_run_state(run, run_id, state):
    with contextlib.closing(sqlite3.connect(run["db"])) as db, db:
        db.execute("UPDATE dag_run SET state = ? WHERE dag_id = ? AND run_id = ?",
                   (state, airflow_dag.DAG_ID, run_id))


def _wait_until_released(output_dir, lease, seconds=90):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if airflow_dag.read_lease(str(output_dir)) is None and not airflow_dag.holder_alive(
                lease):
            return True
        time.sleep(0.5)
    return False


def _run_id(run, date):
    with contextlib.closing(sqlite3.connect(run["db"])) as db:
        (run_id,) = db.execute("SELECT run_id FROM dag_run WHERE dag_id = ? AND run_id "
                               "LIKE ?", (airflow_dag.DAG_ID, f"%{date}T%")).fetchone()
    return run_id


def _active_in(run):
    """run_active for ensure_lock: the DAG run's state in the test's Airflow DB."""
    def active(dag_id, run_id):
        with contextlib.closing(sqlite3.connect(run["db"])) as db:
            row = db.execute("SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?",
                             (dag_id, run_id)).fetchone()
        return bool(row) and row[0] in ("queued", "running")
    return active


def test_under_a_local_task_job_the_lock_outlives_the_task(airflow_run, ml100k_dir):
    """As under a scheduler (Local/Celery executor): `airflow tasks run --local` runs the
    lock task in a LocalTaskJob, which reaps the task's process group when it ends. The
    holder outlives it, keeps `movierec run` and other DAG runs out while the DAG run is
    running in Airflow's database, and lets go once the run is marked failed."""
    run_id = _run_id(airflow_run, RUN_DATE)
    output_dir = airflow_run["root"] / "holder-output"
    env = {**airflow_run["env"], "MOVIEREC_OUTPUT_DIR": str(output_dir),
           "AIRFLOW__SCHEDULER__SCHEDULE_AFTER_TASK_EXECUTION": "False"}
    try:
        _set_dag_run_state(airflow_run, run_id, "running")
        job = subprocess.run(
            [sys.executable, "-m", "airflow", "tasks", "run", airflow_dag.DAG_ID,
             airflow_dag.LOCK_TASK, run_id, "--local", "--force"],
            env=env, cwd=airflow_run["root"], capture_output=True, text=True, timeout=900)
        assert job.returncode == 0, (job.stdout + job.stderr)[-4000:]
        lease = airflow_dag.read_lease(str(output_dir))
        assert lease and lease["run_id"] == run_id and lease["watch_pid"] is None, lease
        assert airflow_dag.holder_alive(lease)

        rc, err = _movierec_run(ml100k_dir, output_dir)
        assert rc == 2 and "another movierec run is using" in err, err
        with pytest.raises(airflow_dag.OutputBusy,
                           match=re.escape(f"DAG run {run_id} of movierec is using")):
            airflow_dag.ensure_lock(str(output_dir), airflow_dag.DAG_ID, "manual__other",
                                    run_active=_active_in(airflow_run), env=env)

        _set_dag_run_state(airflow_run, run_id, "failed")
        log = output_dir / "logs" / "airflow-lock.log"
        assert _wait_until_released(output_dir, lease), log.read_text()
        assert "the DAG run is failed" in log.read_text()
        assert _lock_is_free(output_dir)
    finally:
        _set_dag_run_state(airflow_run, run_id, "success")
        _stop_holders(output_dir)


def test_a_stale_lease_is_taken_over(airflow_run):
    """A lease whose DAG run is over, before its holder has noticed: the next DAG run's
    lock task stops that holder and takes the lock."""
    run_id = _run_id(airflow_run, RUN_DATE)
    output_dir = airflow_run["root"] / "stale-output"
    output_dir.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _set_dag_run_state(airflow_run, run_id, "running")
        stale = airflow_dag.ensure_lock(str(output_dir), airflow_dag.DAG_ID, run_id,
                                        env=airflow_run["env"])
        _set_dag_run_state(airflow_run, run_id, "failed")
        taken = airflow_dag.ensure_lock(str(output_dir), airflow_dag.DAG_ID, "manual__next",
                                        watch_pid=sleeper.pid,
                                        run_active=_active_in(airflow_run),
                                        env=airflow_run["env"])
        assert taken["run_id"] == "manual__next" and taken["pid"] != stale["pid"]
        assert airflow_dag.holder_alive(stale) is False
        assert not _lock_is_free(output_dir)
        sleeper.kill()
        assert _wait_until_released(output_dir, taken)  # the process it watched ended
        assert _lock_is_free(output_dir)
    finally:
        sleeper.kill()
        sleeper.wait()
        _set_dag_run_state(airflow_run, run_id, "success")
        _stop_holders(output_dir)

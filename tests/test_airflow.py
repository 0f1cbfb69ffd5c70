"""The pipeline as an Airflow DAG (pipeline/airflow_dag.py): its settings from the
environment, and one real run through Airflow — a fresh AIRFLOW_HOME with a SQLite
metadata DB, a dags folder holding the one-line shim a user would write, tiny
MovieLens-shaped data, and `airflow dags test` in a subprocess."""

import contextlib
import datetime
import json
import os
import pathlib
import sqlite3
import subprocess
import sys

import pytest

from pipeline import airflow_dag

REPO = pathlib.Path(__file__).resolve().parent.parent
SHIM = "from pipeline.airflow_dag import DAG\n"
RUN_DATE, NEXT_DATE = "2025-01-02", "2025-01-03"
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
        _settings(ml100k_dir, tmp_path, MOVIEREC_HPARAMS="", MOVIEREC_RMSE_UPPER_BOUND=" "))
    defaults = configs.PipelineConfig("", "")
    assert config.hparams == {}
    assert config.rmse_upper_bound == defaults.rmse_upper_bound
    assert (config.split, config.seed) == (defaults.split, defaults.seed)


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
    ({"MOVIEREC_RMSE_UPPER_BOUND": "low"}, "MOVIEREC_RMSE_UPPER_BOUND must be a number"),
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
    })
    return env


def _dags_test(run, date):
    """`airflow dags test movierec DATE` (one DAG run, tasks in-process); its exit code.
    The output goes to a log file in the run's directory."""
    log = run["root"] / f"dags-test-{date}.log"
    with open(log, "w") as out:
        rc = subprocess.run(
            [sys.executable, "-m", "airflow", "dags", "test", airflow_dag.DAG_ID, date],
            env=run["env"], cwd=run["root"], stdout=out, stderr=subprocess.STDOUT,
            timeout=1800).returncode
    run["logs"][date] = log
    return rc


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
    run["rc"] = _dags_test(run, RUN_DATE)
    return run


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
    assert set(states) == components


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

"""The DAG scheduled for real: PostgreSQL as Airflow's metadata database, the
LocalExecutor, and the scheduler (`python -m pipeline.airflow_scheduler`: Airflow's own
`airflow scheduler` with TensorFlow and TFX imported once) running every task in a
process of its own.

One scenario (module fixture `scheduled`), two DAG runs: `first` is triggered, then
`second` at once, which must wait (max_active_runs=1). While `first` runs, its Trainer's
process is SIGKILLed in the middle of its ML Metadata execution; Airflow must retry the
task, and `first` must complete with one model pushed and ML Metadata consistent. Then
`second` runs on the unchanged data: all cache hits, nothing pushed. The tests below
check what the scenario recorded.

PostgreSQL is Debian's (`apt-get install postgresql`; .ci/run installs it), started by
the fixture in a temp dir on a free loopback port as the `postgres` user (it refuses to
run as root), and stopped at the end with the scheduler and every process it started. The
tests skip where PostgreSQL is not installed, unless MOVIEREC_REQUIRE_POSTGRES=1 (CI)."""

import contextlib
import glob
import json
import os
import pathlib
import pwd
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import free_port
from pipeline import airflow_dag, cli
from test_airflow import _airflow_env as dags_test_env  # `airflow dags test`'s env

REPO = pathlib.Path(__file__).resolve().parent.parent
SHIM = "from pipeline.airflow_dag import DAG\n"
FIRST, SECOND = "first", "second"
DAG_ID = airflow_dag.DAG_ID
KILLED_TASK = "Trainer"
DEADLINE_SECONDS = 1500  # the whole scenario, from `airflow db migrate` on
FINAL = ("success", "failed")
RUNNING, COMPLETE, CANCELED, NEW = 2, 3, 6, 1  # ml_metadata Execution.State values


# ------------------------------------------------------------------------ PostgreSQL
def _postgres_bindir():
    """The directory of PostgreSQL's initdb/pg_ctl (PATH, else Debian's newest
    /usr/lib/postgresql/N/bin); skips, or fails with MOVIEREC_REQUIRE_POSTGRES=1."""
    found = shutil.which("initdb")
    if found:  # the real directory: a link on PATH (/usr/local/bin) has no createdb
        return os.path.dirname(os.path.realpath(found))
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                    key=lambda p: [int(n) for n in re.findall(r"\d+", p)])
    if debian:
        return os.path.dirname(debian[-1])
    reason = ("PostgreSQL is not installed (no initdb on PATH nor in "
              "/usr/lib/postgresql/*/bin; Debian: apt-get install postgresql)")
    if os.environ.get("MOVIEREC_REQUIRE_POSTGRES") == "1":
        pytest.fail(reason + " and MOVIEREC_REQUIRE_POSTGRES=1")
    pytest.skip(reason + "; set MOVIEREC_REQUIRE_POSTGRES=1 to make this a failure")


class _Postgres:
    """A throwaway PostgreSQL server: data and unix socket in a temp dir, TCP on a free
    loopback port, trust authentication, superuser and database `airflow`."""

    def __init__(self, bindir):
        self.bindir = bindir
        self.dir = tempfile.mkdtemp(prefix="movierec-pg-")
        self.data, self.log = os.path.join(self.dir, "data"), os.path.join(self.dir, "log")
        self.port = free_port()
        self.started = False
        self.as_user = []
        if os.geteuid() == 0:  # PostgreSQL will not run as root
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail("running as root, and there is no `postgres` user to run "
                            "PostgreSQL as")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self.as_user = (["runuser", "-u", "postgres", "--"] if shutil.which("runuser")
                            else None)

    def _run(self, tool, *args, timeout=180):
        command = [os.path.join(self.bindir, tool), *args]
        if self.as_user is None:  # no runuser: su
            command = ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(command)]
        else:
            command = [*self.as_user, *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              cwd=self.dir)
        if done.returncode:
            log = pathlib.Path(self.log)
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stdout}"
                               f"{done.stderr}" + (log.read_text()[-3000:]
                                                   if log.exists() else ""))
        return done

    def start(self):
        self._run("initdb", "-D", self.data, "-U", "airflow", "--auth=trust",
                  "--encoding=UTF8", "--no-sync", "--no-instructions")
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=200")
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w",
                  "-t", "120", "start")
        self.started = True
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "airflow",
                  "airflow")
        return self

    @property
    def url(self):
        return f"postgresql+psycopg2://airflow@127.0.0.1:{self.port}/airflow"

    def connect(self):
        import psycopg2

        db = psycopg2.connect(host="127.0.0.1", port=self.port, user="airflow",
                              dbname="airflow")
        db.autocommit = True
        return db

    def postmaster_pid(self):
        try:
            return int(pathlib.Path(self.data, "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self):
        if self.started:
            pid = self.postmaster_pid()
            try:
                self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "60", "stop")
            except (RuntimeError, subprocess.TimeoutExpired):
                if pid:  # the postmaster we started; its backends end with it
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres():
    server = _Postgres(_postgres_bindir())
    try:
        yield server.start()
    finally:
        server.stop()


# ---------------------------------------------------------------- Airflow, scheduled
def _airflow_env(home, dags, data_dir, output_dir, database_url):
    """test_airflow's environment (the repository on PYTHONPATH, the settings, FAST), on
    PostgreSQL with LocalExecutor, tuned for a scheduler that reacts within seconds, and
    with the DAG's own retries."""
    env = dags_test_env(home, dags, data_dir, output_dir)
    del env["MOVIEREC_RETRIES"]  # the default: each task retried once
    env.update({
        "AIRFLOW__DATABASE__LOAD_DEFAULT_CONNECTIONS": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database_url,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAG_FILE_PROCESSOR_TIMEOUT": "900",
        # parse the DAG file once (and for callbacks), not every 30 s
        "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "3600",
        "AIRFLOW__SCHEDULER__DAG_DIR_LIST_INTERVAL": "3600",
        "AIRFLOW__SCHEDULER__PARSING_PROCESSES": "1",
        # react within seconds: scheduling loop, task heartbeats (a dead task is found
        # within [scheduler] zombie_detection_interval, 10 s: pipeline.airflow_scheduler)
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "2",
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
        "AIRFLOW__SCHEDULER__SCHEDULER_ZOMBIE_TASK_THRESHOLD": "120",
        "MOVIEREC_SCHEDULE": "none", "MOVIEREC_RETRY_DELAY": "1",
    })
    return env


def _airflow(run, *args, timeout=300):
    done = subprocess.run([sys.executable, "-m", "airflow", *args], env=run["env"],
                          cwd=run["root"], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, (args, (done.stdout + done.stderr)[-4000:])
    return done.stdout


def _query(db, sql, *params):
    with db.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _dag_runs(db) -> dict:
    return {run_id: (state, start, end) for run_id, state, start, end in _query(
        db, "SELECT run_id, state, start_date, end_date FROM dag_run WHERE dag_id = %s",
        DAG_ID)}


def _task_instances(db, run_id) -> dict:
    rows = _query(db, "SELECT task_id, state, try_number, pid, hostname, start_date, "
                      "end_date FROM task_instance WHERE dag_id = %s AND run_id = %s",
                  DAG_ID, run_id)
    return {r[0]: dict(zip(("state", "try_number", "pid", "hostname", "start", "end"),
                           r[1:])) for r in rows}


def _open_executions(metadata_path, component) -> list:
    """Ids of the component's executions that ML Metadata has as RUNNING (read with
    sqlite3, read-only: TFX keeps writing it)."""
    if not os.path.isfile(metadata_path):
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{metadata_path}?mode=ro", uri=True,
                                                timeout=5)) as db:
            return [row[0] for row in db.execute(
                "SELECT e.id FROM Execution e JOIN ExecutionProperty p "
                "ON p.execution_id = e.id WHERE p.name = 'component_id' "
                "AND p.string_value = ? AND e.last_known_state = ?",
                (component, RUNNING))]
    except sqlite3.Error:  # not created yet, or being written
        return []


def _cmdline(pid) -> str:
    try:
        return pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(
            b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _processes_of(home) -> list:
    """Pids of the processes whose environment has our AIRFLOW_HOME: the scheduler and
    its children, task processes (own process groups) and the lock holder (own session)."""
    mark = f"AIRFLOW_HOME={home}".encode()
    pids = []
    for entry in glob.glob("/proc/[0-9]*/environ"):
        pid = int(entry.split("/")[2])
        if pid == os.getpid():
            continue
        try:
            if mark in pathlib.Path(entry).read_bytes().split(b"\0"):
                pids.append(pid)
        except OSError:
            pass
    return pids


def _stop_scheduler(run):
    scheduler = run.get("scheduler")
    if scheduler is not None and scheduler.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(scheduler.pid, signal.SIGTERM)
        try:
            scheduler.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(scheduler.pid, signal.SIGKILL)
            scheduler.wait(timeout=30)
    for sig in (signal.SIGTERM, signal.SIGKILL):  # whatever outlived it
        left = _processes_of(run["home"])
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while left and time.monotonic() < deadline:
            left = [pid for pid in left if os.path.exists(f"/proc/{pid}")
                    and not _zombie(pid)]
            time.sleep(0.2)
    run["left_running"] = [(pid, _cmdline(pid)) for pid in _processes_of(run["home"])
                           if not _zombie(pid)]


def _zombie(pid) -> bool:
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] \
            == "Z"
    except (OSError, IndexError):
        return True


def _scheduler_log(run, lines=80) -> str:
    text = run["scheduler_log"].read_text(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def _task_log(run, run_id, task_id, try_number) -> str:
    logs = glob.glob(str(run["home"] / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}"
                         / f"task_id={task_id}" / f"attempt={try_number}.log"))
    return pathlib.Path(logs[0]).read_text(errors="replace") if logs else ""


def _wait_for_the_dag(run, db, deadline):
    """Until the scheduler's DAG processor has parsed the shim and stored the DAG."""
    while True:
        if _query(db, "SELECT 1 FROM dag WHERE dag_id = %s AND is_active", DAG_ID):
            return
        errors = _query(db, "SELECT filename, stacktrace FROM import_error")
        assert not errors, errors
        assert run["scheduler"].poll() is None, _scheduler_log(run)
        assert time.monotonic() < deadline, ("the DAG never appeared",
                                             _scheduler_log(run))
        time.sleep(1)


def _watch(run, db, deadline):
    """Polls Airflow's database until both DAG runs are over: records what the second
    run did while the first ran, and SIGKILLs the first run's Trainer process in the
    middle of its ML Metadata execution."""
    metadata_path = str(run["output"] / "metadata.sqlite")
    run["second_while_first"] = set()  # states of `second` seen while `first` ran
    run["second_tis_while_first"] = set()
    while True:
        runs = _dag_runs(db)
        first, second = runs.get(FIRST, (None,))[0], runs.get(SECOND, (None,))[0]
        if first not in FINAL:
            if first == "running" and second is not None:
                run["second_while_first"].add(second)
                run["second_tis_while_first"] |= {
                    ti["state"] for ti in _task_instances(db, SECOND).values()}
            if "killed" not in run:
                ti = _task_instances(db, FIRST).get(KILLED_TASK, {})
                if (ti.get("state") == "running" and ti.get("pid")
                        and _open_executions(metadata_path, KILLED_TASK)):
                    time.sleep(3)  # into the executor (training takes ~30 s)
                    run["killed"] = {**ti, "cmdline": _cmdline(ti["pid"]),
                                     "executions": _open_executions(metadata_path,
                                                                    KILLED_TASK),
                                     "at": time.monotonic()}
                    os.kill(ti["pid"], signal.SIGKILL)
        elif "first_done" not in run:
            run["first_done"] = time.monotonic()
        if first in FINAL and second in FINAL:
            run["second_done"] = time.monotonic()
            return
        assert run["scheduler"].poll() is None, _scheduler_log(run)
        assert time.monotonic() < deadline, (runs, _task_instances(db, FIRST),
                                             _task_instances(db, SECOND),
                                             _scheduler_log(run))
        time.sleep(0.5)


def _versions(run):
    serving = run["output"] / "serving" / "movierec"
    return sorted(p.name for p in serving.iterdir()) if serving.is_dir() else []


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory, ml100k_dir, postgres):
    """The scenario (see the module docstring); a dict of what it saw, with timings."""
    started = time.monotonic()
    deadline = started + DEADLINE_SECONDS
    root = tmp_path_factory.mktemp("airflow-scheduled")
    home, dags, output_dir = root / "home", root / "dags", root / "output"
    home.mkdir()
    dags.mkdir()
    (dags / "movierec.py").write_text(SHIM)
    run = {"root": root, "home": home, "output": output_dir, "seconds": {},
           "scheduler_log": root / "scheduler.log",
           "env": _airflow_env(home, dags, ml100k_dir, output_dir, postgres.url)}
    try:
        _airflow(run, "db", "migrate", timeout=600)
        run["seconds"]["db migrate"] = round(time.monotonic() - started, 1)
        with open(run["scheduler_log"], "w") as log:
            run["scheduler"] = subprocess.Popen(
                [sys.executable, "-m", "pipeline.airflow_scheduler"], env=run["env"],
                cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        with contextlib.closing(postgres.connect()) as db:
            _wait_for_the_dag(run, db, deadline)
            run["seconds"]["DAG parsed"] = round(time.monotonic() - started, 1)
            _airflow(run, "dags", "unpause", DAG_ID)
            triggered = time.monotonic()
            _airflow(run, "dags", "trigger", DAG_ID, "--run-id", FIRST,
                     "--exec-date", "2025-01-02T00:00:00+00:00")
            _airflow(run, "dags", "trigger", DAG_ID, "--run-id", SECOND,
                     "--exec-date", "2025-01-03T00:00:00+00:00")
            run["seconds"]["triggered"] = round(time.monotonic() - started, 1)
            _watch(run, db, deadline)
            run["dag_runs"] = _dag_runs(db)
            run["tis"] = {r: _task_instances(db, r) for r in (FIRST, SECOND)}
            run["max_tries"] = set(sum(_query(
                db, "SELECT DISTINCT max_tries FROM task_instance WHERE dag_id = %s",
                DAG_ID), ()))
            run["history"] = _query(
                db, "SELECT try_number, state, pid, hostname FROM task_instance_history "
                    "WHERE dag_id = %s AND run_id = %s AND task_id = %s "
                    "ORDER BY try_number", DAG_ID, FIRST, KILLED_TASK)
        run["states_for_dag_run"] = {r: json.loads(_airflow(
            run, "tasks", "states-for-dag-run", DAG_ID, r, "--output", "json"))
            for r in (FIRST, SECOND)}
        run["seconds"].update({
            "first run": round(run["first_done"] - triggered, 1),
            "second run": round(run["second_done"] - run["first_done"], 1),
            "kill to first done": round(run["first_done"] - run["killed"]["at"], 1)
            if "killed" in run else None})
        _stop_scheduler(run)  # before the tests, which check that nothing is left
        run["seconds"]["total"] = round(time.monotonic() - started, 1)
        trainer = run["tis"][FIRST].get(KILLED_TASK, {})
        print(f"\nscheduled scenario seconds: {run['seconds']}\nkilled: "
              f"{ {k: v for k, v in run.get('killed', {}).items() if k != 'at'} }\n"
              f"{KILLED_TASK} then: try {trainer.get('try_number')} {trainer.get('state')} "
              f"pid {trainer.get('pid')}; history {run['history']}", file=sys.stderr)
        yield run
    finally:
        _stop_scheduler(run)


# --------------------------------------------------------------------------- the tests
def test_both_dag_runs_succeeded(scheduled):
    for run_id in (FIRST, SECOND):
        state = scheduled["dag_runs"][run_id][0]
        tis = scheduled["tis"][run_id]
        assert state == "success", (run_id, tis, _scheduler_log(scheduled))
        assert tis and {ti["state"] for ti in tis.values()} == {"success"}, (run_id, tis)
        listed = {row["task_id"]: row["state"] for row in
                  scheduled["states_for_dag_run"][run_id]}
        assert listed == {task: ti["state"] for task, ti in tis.items()}


def test_every_task_ran_in_a_process_of_its_own(scheduled):
    """Under the LocalExecutor each task instance is its own process (pid recorded by
    Airflow), none of them the scheduler."""
    for run_id in (FIRST, SECOND):
        tis = scheduled["tis"][run_id]
        pids = [ti["pid"] for ti in tis.values()]
        assert all(pids) and len(set(pids)) == len(pids), (run_id, pids)
        assert scheduled["scheduler"].pid not in pids
        hosts = {ti["hostname"] for ti in tis.values()}
        assert len(hosts) == 1 and hosts <= {socket.gethostname(), socket.getfqdn()}, hosts
    assert not set(ti["pid"] for ti in scheduled["tis"][FIRST].values()) & set(
        ti["pid"] for ti in scheduled["tis"][SECOND].values())


def test_the_second_run_waited_for_the_first(scheduled):
    """max_active_runs=1: triggered while the first ran, the second stayed queued with
    no task started, and began only after the first had ended."""
    assert scheduled["second_while_first"] == {"queued"}, scheduled["second_while_first"]
    waiting = scheduled["second_tis_while_first"]
    assert waiting <= {None}, waiting  # task instances created, none scheduled
    first_end = scheduled["dag_runs"][FIRST][2]
    starts = [ti["start"] for ti in scheduled["tis"][SECOND].values()]
    assert scheduled["dag_runs"][SECOND][1] >= first_end
    assert min(starts) >= first_end


def test_the_killed_task_was_retried(scheduled):
    assert scheduled["max_tries"] == {1}  # MOVIEREC_RETRIES' default: every task
    killed = scheduled.get("killed")
    assert killed, ("the Trainer was never seen running", scheduled["tis"][FIRST])
    assert killed["try_number"] == 1
    trainer = scheduled["tis"][FIRST][KILLED_TASK]
    assert trainer["state"] == "success" and trainer["try_number"] == 2, trainer
    assert trainer["pid"] != killed["pid"]
    # Airflow keeps the killed try in task_instance_history
    assert [(t, s, p) for t, s, p, _ in scheduled["history"]] == [
        (1, "failed", killed["pid"])], scheduled["history"]
    log = _task_log(scheduled, FIRST, KILLED_TASK, 2)
    assert (f"{KILLED_TASK}: an earlier attempt of this task left 1 execution(s) in ML "
            "Metadata: set aside") in log, log[-3000:]


def _store(scheduled):
    from pipeline import metadata

    return metadata.connect(str(scheduled["output"]))


def test_ml_metadata_is_consistent_after_the_kill(scheduled):
    from ml_metadata.proto import metadata_store_pb2

    from pipeline import metadata

    store = _store(scheduled)
    executions = store.get_executions()
    assert not [e.id for e in executions if e.last_known_state in (RUNNING, NEW)]
    by_id = {e.id: e for e in executions}
    killed = scheduled["killed"]["executions"]
    assert len(killed) == 1, killed
    execution = by_id[killed[0]]
    assert execution.last_known_state == CANCELED
    assert "interrupted" in execution.custom_properties
    # what the killed attempt had registered to write (the drivers register outputs
    # before they run) is abandoned; the retry's model is the live one
    events = store.get_events_by_execution_ids(killed)
    begun = store.get_artifacts_by_id(
        [e.artifact_id for e in events if e.type == metadata_store_pb2.Event.OUTPUT])
    assert begun and {a.state for a in begun} == {metadata_store_pb2.Artifact.ABANDONED}
    live = [a for a in store.get_artifacts_by_type("Model")
            if a.state == metadata_store_pb2.Artifact.LIVE]
    assert len(live) == 1 and live[0].id not in {a.id for a in begun}, live
    index = metadata._Index(store)
    trainers = sorted((e.id, e.last_known_state) for e in executions
                      if index.component(e.id) == KILLED_TASK
                      and index.run(e.id) == f"{DAG_ID}.{FIRST}")
    assert trainers == [(killed[0], CANCELED), (trainers[1][0], COMPLETE)], trainers
    assert len(_versions(scheduled)) == 1, _versions(scheduled)


def test_inspect_runs_agrees(scheduled, capsys):
    capsys.readouterr()
    assert cli.main(["inspect", "runs", "--output-dir", str(scheduled["output"]),
                     "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in runs] == [f"{DAG_ID}.{FIRST}", f"{DAG_ID}.{SECOND}"], runs
    first, second = runs
    components = {c["component"] for c in first["components"]}
    assert None not in components and {"Trainer", "Pusher"} <= components
    assert first["state"] == "complete", first
    rows = [c for c in first["components"] if c["component"] == KILLED_TASK]
    assert [c["state"] for c in rows] == ["canceled", "executed"], rows
    # every component executed (the killed attempt aside), but the resolver of the
    # baseline, which TFX records as cached
    cached = {c["component"] for c in first["components"] if c["state"] == "cached"}
    assert cached <= {"latest_blessed_model_resolver"}, first
    assert first["executed"] == len(components) - len(cached), first
    assert second["state"] == "cached", second
    assert {c["component"] for c in second["components"]} == components
    assert second["executed"] == 0 and second["cached"] == len(components), second


def test_the_lock_was_released_and_nothing_left_running(scheduled):
    """The teardown task stopped the lock holder; stopping the scheduler ended every
    process it had started (task processes run in process groups of their own)."""
    assert airflow_dag.read_lease(str(scheduled["output"])) is None
    assert scheduled["scheduler"].returncode is not None
    assert scheduled["left_running"] == []


# ------------------------------------------- a retry in ML Metadata (no Airflow needed)
def test_a_retried_component_gets_an_execution_of_its_own(tmp_path):
    """What TFX's Airflow runner records (its legacy drivers: one execution per component
    and run), replayed through TFX's own metadata handle: a Trainer attempt killed after
    registering its execution. Attempting again fails in ML Metadata unless the earlier
    attempt is set aside first; then the retry is an execution of its own, its outputs are
    the ones the next component finds, and `inspect` counts the run complete."""
    import ml_metadata as mlmd
    from ml_metadata.proto import metadata_store_pb2
    from tfx import types
    from tfx.dsl.components.base import base_driver
    from tfx.orchestration import data_types
    from tfx.orchestration import metadata as tfx_metadata
    from tfx.types import standard_artifacts

    from pipeline import metadata

    path = str(tmp_path / "metadata.sqlite")
    run = data_types.PipelineInfo(pipeline_name=DAG_ID, pipeline_root=str(tmp_path),
                                  run_id=FIRST)

    def component(component_id):
        return data_types.ComponentInfo(component_type=f"test.{component_id}",
                                        component_id=component_id, pipeline_info=run)

    def artifact(kind, name):
        made = kind()
        made.uri = str(tmp_path / name)
        return made

    def register(handle, component_id, inputs):
        contexts = handle.register_pipeline_contexts_if_not_exists(run)
        return handle.register_execution(pipeline_info=run,
                                         component_info=component(component_id),
                                         contexts=contexts, input_artifacts=inputs)

    def reason(n):
        return f"try {n}"

    with tfx_metadata.Metadata(tfx_metadata.sqlite_metadata_connection_config(path)) as m:
        register(m, "MovieLensExampleGen", {})
        m.publish_execution(component("MovieLensExampleGen"),
                            {"examples": [artifact(standard_artifacts.Examples, "ex")]})
        examples = m.search_artifacts("examples", run, "MovieLensExampleGen")
        driver = airflow_dag._named_outputs(base_driver.BaseDriver, by_component=False)(m)

        def outputs(execution):  # as the Trainer's driver makes them, before it runs
            made = driver._prepare_output_artifacts(
                {}, {"model": types.Channel(type=standard_artifacts.Model)}, {},
                execution.id, run, component(KILLED_TASK))
            m.update_execution(execution=execution, component_info=component(KILLED_TASK),
                               output_artifacts=made)
            return made

        killed = register(m, KILLED_TASK, {"examples": examples})
        [begun] = outputs(killed)["model"]  # then SIGKILL
        with pytest.raises(mlmd.errors.AlreadyExistsError):  # TFX's retry, as it is
            register(m, KILLED_TASK, {"examples": examples})

        assert metadata.set_aside_attempt(path, DAG_ID, FIRST, KILLED_TASK, reason(2)) == 1
        retry = register(m, KILLED_TASK, {"examples": examples})
        assert retry.id != killed.id
        made = outputs(retry)
        [model] = made["model"]
        assert model.name == f"model:{FIRST}@attempt-2" and model.uri != begun.uri
        m.publish_execution(component(KILLED_TASK), made)
        assert [a.uri for a in m.search_artifacts("model", run, KILLED_TASK)] == [model.uri]

    store = metadata.connect(path)
    states = {e.id: e.last_known_state for e in store.get_executions()}
    assert states[killed.id] == CANCELED and states[retry.id] == COMPLETE
    [execution] = store.get_executions_by_id([killed.id])
    assert execution.custom_properties["interrupted"].string_value == reason(2)
    [begun] = store.get_artifacts_by_id([begun.id])
    assert begun.state == metadata_store_pb2.Artifact.ABANDONED
    [summary] = [metadata.run_summary(store, c) for c in metadata.runs(store)]
    assert [(c["component"], c["state"]) for c in summary["components"]] == [
        ("MovieLensExampleGen", "executed"), (KILLED_TASK, "canceled"),
        (KILLED_TASK, "executed")]
    assert summary["state"] == "complete" and summary["executed"] == 2
    # set aside once more (a task cleared by hand): a finished attempt keeps its state
    assert metadata.set_aside_attempt(path, DAG_ID, FIRST, KILLED_TASK, reason(3)) == 1
    assert {e.id: e.last_known_state for e in metadata.connect(path).get_executions()} \
        == states
    assert metadata.set_aside_attempt(path, DAG_ID, "other", KILLED_TASK, reason(3)) == 0

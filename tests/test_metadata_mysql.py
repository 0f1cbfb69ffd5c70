"""ML Metadata on a database server (`--metadata-uri mysql://...`): a MariaDB server started
by hand on loopback for this module, the real pipeline on it (a run, a cached re-run,
inspect and report), two runs at once on different output directories sharing the one
database, and the one-line errors of a bad URI, an unreachable server, a wrong password
and a missing database.

The server tests skip when MariaDB is not installed, and fail instead where
MOVIEREC_REQUIRE_MARIADB=1 (CI, see .ci/run). The tests of the URI, of the pipeline
naming and of the scoping of a shared store need no server.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import cli_output, free_port, progress_states, serving_snapshot
from pipeline import cli, configs, metadata
from pipeline.errors import UserError

FAST = ["--epochs", "3", "--batch-size", "256", "--rmse-upper-bound", "2.0",
        "--beam-pipeline-args=--direct_num_workers=1 --direct_running_mode=in_memory"]
REPO = pathlib.Path(__file__).resolve().parents[1]
USER, DATABASE = "movierec", "movierec"
PASSWORD = "s3cr%t:p@ss"  # needs percent-encoding in a URI
ENCODED = "s3cr%25t%3Ap%40ss"


# ------------------------------------------------------------------ without a server
def test_bad_uris_are_one_line_errors(tmp_path, ml100k_dir, capsys):
    out = tmp_path / "out"
    for uri, why in (("postgres://u:hunter22@h/db", "only mysql://"),
                     ("mysql://u:hunter22@h:99999/db", "out of range"),
                     ("mysql://u:hunter22@h", "one database name"),
                     ("mysql://u:hunter22@/db", "no host"),
                     ("mysql://h/db", "no user")):
        rc, _, err = cli_output(capsys, "run", "--data-dir", str(ml100k_dir),
                                "--output-dir", str(out), "--metadata-uri", uri)
        assert rc == 2 and len(err.splitlines()) == 1 and why in err, (uri, err)
        assert err.startswith("movierec: error: metadata_uri") and "hunter22" not in err
        rc, _, err = cli_output(capsys, "inspect", "runs", "--output-dir", str(out),
                                "--metadata-uri", uri)
        assert rc == 2 and why in err and "hunter22" not in err, (uri, err)
    assert not out.exists()
    rc, _, err = cli_output(capsys, "report", "--output-dir", str(out), "--metadata",
                            str(out / "m.sqlite"), "--metadata-uri", "mysql://u@h/db")
    assert rc == 2 and "not both" in err
    with pytest.raises(UserError, match="pipeline_name must be"):
        configs.from_options({"data_dir": str(ml100k_dir), "output_dir": str(out),
                              "pipeline_name": "has space"})


def test_unreachable_server_is_one_line_naming_it(tmp_path, ml100k_dir, capfd):
    port = free_port()  # nothing listens there
    uri = f"mysql://{USER}:{ENCODED}@127.0.0.1:{port}/{DATABASE}"
    out = tmp_path / "out"
    for argv in (["run", "--data-dir", str(ml100k_dir), "--output-dir", str(out),
                  "--metadata-uri", uri],
                 ["inspect", "runs", "--output-dir", str(out), "--metadata-uri", uri],
                 ["report", "--output-dir", str(out), "--metadata-uri", uri]):
        capfd.readouterr()
        assert cli.main(argv) == 2
        err = capfd.readouterr().err.strip()
        assert err == (f"movierec: error: cannot reach the metadata database server at "
                       f"127.0.0.1:{port}: Connection refused"), err
    assert not out.exists()  # the run failed before it touched the output directory


def test_config_names_one_pipeline_per_output_directory(tmp_path, ml100k_dir, monkeypatch):
    def config(out, **extra):
        return configs.from_options({"data_dir": str(ml100k_dir), "output_dir": str(out),
                                     **extra})

    uri = f"mysql://{USER}:{ENCODED}@db.example:3307/{DATABASE}"
    a, b = config(tmp_path / "a", metadata_uri=uri), config(tmp_path / "b", metadata_uri=uri)
    assert a.pipeline_name != b.pipeline_name
    assert a.pipeline_name.startswith("movierec-a-") and len(a.pipeline_name) <= 63
    assert a.pipeline_name == config(tmp_path / "a", metadata_uri=uri).pipeline_name
    assert a.metadata_scope == a.pipeline_name and a.metadata_source == uri
    mysql = a.metadata_connection_config().mysql
    assert (mysql.host, mysql.port, mysql.database, mysql.user, mysql.password) == (
        "db.example", 3307, DATABASE, USER, PASSWORD)
    assert mysql.skip_db_creation
    named = config(tmp_path / "a", metadata_uri=uri, pipeline_name="nightly")
    assert named.pipeline_name == named.metadata_scope == "nightly"
    # the default is unchanged: SQLite in the output directory, pipeline movierec, and
    # the whole (own) store is the output directory's
    plain = config(tmp_path / "a")
    assert plain.pipeline_name == "movierec" and plain.metadata_scope is None
    assert plain.metadata_connection_config().sqlite.filename_uri == str(
        tmp_path / "a" / "metadata.sqlite")
    # a URI without a password takes it from the environment
    monkeypatch.setenv(metadata.PASSWORD_ENV, "from-env")
    bare = config(tmp_path / "a", metadata_uri=f"mysql://{USER}@h/{DATABASE}")
    assert bare.metadata_connection_config().mysql.password == "from-env"
    assert configs.mask_passwords(f"--metadata-uri={uri} x") == (
        f"--metadata-uri=mysql://{USER}:***@db.example:3307/{DATABASE} x")


def _two_pipelines(path):
    """A SQLite store shaped as two output directories' runs on one database: pipelines p1
    and p2, a run of each (a child of its pipeline context, as LocalDagRunner records
    it) with an execution left RUNNING and its pending output."""
    from ml_metadata.proto import metadata_store_pb2 as pb

    store = metadata._open(str(path), metadata.connection_config(str(path), "create"))

    def type_id(kind, name):
        put = getattr(store, f"put_{kind}_type")
        return put(getattr(pb, f"{kind.capitalize()}Type")(name=name))

    context_types = {n: type_id("context", n) for n in ("pipeline", "pipeline_run", "node")}
    execution_type = type_id("execution", "Trainer")
    model_type = type_id("artifact", "Model")
    ids = {}
    for pipeline in ("p1", "p2"):
        [p, run, node] = store.put_contexts([
            pb.Context(type_id=context_types["pipeline"], name=pipeline),
            pb.Context(type_id=context_types["pipeline_run"], name=f"{pipeline}-run"),
            pb.Context(type_id=context_types["node"], name=f"{pipeline}.Trainer")])
        store.put_parent_contexts([pb.ParentContext(parent_id=p, child_id=run)])
        execution = pb.Execution(type_id=execution_type, last_known_state=pb.Execution.RUNNING)
        model = pb.Artifact(type_id=model_type, uri=f"/{pipeline}/model",
                            state=pb.Artifact.PENDING)
        contexts = store.get_contexts_by_id([p, run, node])
        execution_id, [model_id], _ = store.put_execution(
            execution, [(model, pb.Event(type=pb.Event.PENDING_OUTPUT))], contexts)
        ids[pipeline] = (execution_id, model_id)
    return ids


def test_a_shared_store_is_scoped_to_the_output_directorys_pipeline(tmp_path):
    from ml_metadata.proto import metadata_store_pb2 as pb

    path = tmp_path / "shared.sqlite"
    ids = _two_pipelines(path)
    p1 = metadata.connect(str(path), "p1")
    assert [c.name for c in metadata.runs(p1)] == ["p1-run"]
    assert [a["uri"] for a in metadata.artifacts(p1)] == ["/p1/model"]
    assert [a["uri"] for a in metadata.artifacts(p1, type_name="Model")] == ["/p1/model"]
    with pytest.raises(metadata.MetadataError, match="not of pipeline p1"):
        metadata.lineage(p1, ids["p2"][1])
    assert len(metadata.runs(metadata.connect(str(path)))) == 2  # unscoped: the store

    # the next run of p1's output directory closes p1's killed execution, not p2's (a run
    # in progress of another output directory)
    assert metadata.close_interrupted(str(path), "p1") == 1
    store = metadata.connect(str(path))
    [(e1, m1), (e2, m2)] = [ids["p1"], ids["p2"]]
    states = {e.id: e.last_known_state for e in store.get_executions_by_id([e1, e2])}
    assert states == {e1: pb.Execution.CANCELED, e2: pb.Execution.RUNNING}
    artifacts = {a.id: a.state for a in store.get_artifacts_by_id([m1, m2])}
    assert artifacts == {m1: pb.Artifact.ABANDONED, m2: pb.Artifact.PENDING}
    assert metadata.close_interrupted(str(path), "p1") == 0
    with pytest.raises(metadata.MetadataError, match="pipeline p3 has no run.*known: p1, p2"):
        metadata.connect_reader(str(path), "p3")


# --------------------------------------------------------------------- MariaDB server
def _binary(name: str):
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _die_with_parent():
    """The server stops when the test process goes, however it goes."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory):
    """A MariaDB server of its own on 127.0.0.1 (a free port), with database `movierec`
    and user `movierec` (password PASSWORD); stopped at the end of the module."""
    binaries = {n: _binary(n) for n in ("mariadbd", "mariadb-install-db", "mariadb")}
    missing = [n for n, path in binaries.items() if not path]
    if missing:
        reason = f"MariaDB is not installed ({', '.join(missing)} not found)"
        if os.environ.get("MOVIEREC_REQUIRE_MARIADB") == "1":
            pytest.fail(reason + " and MOVIEREC_REQUIRE_MARIADB=1")
        pytest.skip(reason + "; apt-get install mariadb-server, or set "
                    "MOVIEREC_REQUIRE_MARIADB=1 to make this a failure")
    root = tmp_path_factory.mktemp("mariadb")
    datadir, sock, port = root / "data", root / "mariadb.sock", free_port()
    as_root = ["--user=root"] if os.geteuid() == 0 else []
    subprocess.run([binaries["mariadb-install-db"], "--no-defaults", f"--datadir={datadir}",
                    "--auth-root-authentication-method=normal", "--skip-test-db",
                    "--skip-name-resolve", *as_root],
                   check=True, capture_output=True, timeout=120)
    log = open(root / "server.log", "w")
    server = subprocess.Popen(
        [binaries["mariadbd"], "--no-defaults", f"--datadir={datadir}", f"--port={port}",
         "--bind-address=127.0.0.1", f"--socket={sock}", f"--pid-file={root / 'pid'}",
         "--skip-name-resolve", *as_root],
        stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)

    def sql(statements: str):
        return subprocess.run([binaries["mariadb"], "--no-defaults", f"--socket={sock}",
                               "-uroot", "-e", statements],
                              capture_output=True, text=True, timeout=30)

    try:
        deadline = time.time() + 60
        while sql("SELECT 1").returncode != 0:
            assert server.poll() is None, (root / "server.log").read_text()[-2000:]
            assert time.time() < deadline, "MariaDB did not start in 60 s"
            time.sleep(0.2)
        done = sql(f"CREATE DATABASE {DATABASE}; "
                   f"CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'; "
                   f"GRANT ALL PRIVILEGES ON {DATABASE}.* TO '{USER}'@'127.0.0.1';")
        assert done.returncode == 0, done.stderr

        def dump() -> str:
            return subprocess.run(
                [_binary("mariadb-dump") or "mariadb-dump", "--no-defaults",
                 f"--socket={sock}", "-uroot", DATABASE],
                capture_output=True, text=True, timeout=60, check=True).stdout

        def new_database(name: str) -> str:
            done = sql(f"CREATE DATABASE {name}; "
                       f"GRANT ALL PRIVILEGES ON {name}.* TO '{USER}'@'127.0.0.1';")
            assert done.returncode == 0, done.stderr
            return f"mysql://{USER}:{ENCODED}@127.0.0.1:{port}/{name}"

        yield {"port": port, "uri": f"mysql://{USER}:{ENCODED}@127.0.0.1:{port}/{DATABASE}",
               "bare_uri": f"mysql://{USER}@127.0.0.1:{port}/{DATABASE}", "dump": dump,
               "new_database": new_database}
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _versions(output_dir):
    serving = pathlib.Path(output_dir, "serving", "movierec")
    return sorted(p.name for p in serving.iterdir()) if serving.exists() else []


def _inspect(capsys, out, uri, *args):
    capsys.readouterr()
    assert cli.main(["inspect", *args, "--output-dir", str(out), "--metadata-uri", uri,
                     "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _assert_no_password(*texts):
    for text in texts:
        assert PASSWORD not in text and ENCODED not in text


@pytest.fixture(scope="module")
def first_run(mariadb, tmp_path_factory, ml100k_dir):
    out = tmp_path_factory.mktemp("mysql-run") / "output"
    rc = cli.main(["run", "--data-dir", str(ml100k_dir), "--output-dir", str(out), *FAST,
                   "--metadata-uri", mariadb["uri"]])
    return rc, out


def test_wrong_password_and_missing_database_are_one_line(mariadb, tmp_path, capfd):
    port = mariadb["port"]
    for uri, expected in (
            (f"mysql://{USER}:wrong-{ENCODED}@127.0.0.1:{port}/{DATABASE}",
             f"the metadata database server at 127.0.0.1:{port} refused user 'movierec'"),
            (f"mysql://{USER}:{ENCODED}@127.0.0.1:{port}/nosuchdb",
             f"no database 'nosuchdb' on the metadata database server at 127.0.0.1:{port}")):
        capfd.readouterr()
        assert cli.main(["inspect", "runs", "--output-dir", str(tmp_path),
                         "--metadata-uri", uri]) == 2
        err = capfd.readouterr().err  # MLMD's own C++ log line included
        assert len(err.strip().splitlines()) == 1 and expected in err, err
        _assert_no_password(err)


def test_connections_at_once_to_a_new_database(mariadb):
    """Runs that start together on an empty database race to create ML Metadata's tables;
    the losers retry (MLMD asks them to) instead of failing."""
    uri = mariadb["new_database"]("movierec_new")
    start = time.time() + 5  # after every process's imports
    code = ("import sys, time\nfrom pipeline import metadata\n"
            f"time.sleep(max(0, {start} - time.time()))\n"
            "metadata.connect(sys.argv[1])\n")
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    processes = [subprocess.Popen([sys.executable, "-c", code, uri], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(4)]
    for process in processes:
        printed = process.communicate(timeout=120)[0]
        assert process.returncode == 0, printed


def test_run_on_the_server(first_run, mariadb, capsys):
    rc, out = first_run
    assert rc == 0
    assert len(_versions(out)) == 1 and not (out / "metadata.sqlite").exists()
    [run] = _inspect(capsys, out, mariadb["uri"], "runs")
    assert run["state"] == "complete" and run["cached"] == 0
    assert f"--metadata-uri mysql://{USER}:***@127.0.0.1" in run["command"]
    logs = "".join(p.read_text() for p in (out / "logs").glob("*.log"))
    assert "password: \"***\"" in logs  # TFX logs the connection config: masked
    _assert_no_password(run["command"], logs, mariadb["dump"]())


def test_cached_rerun_on_the_server(first_run, mariadb, ml100k_dir, capsys):
    _, out = first_run
    before = serving_snapshot(out)
    capsys.readouterr()
    assert cli.main(["run", "--data-dir", str(ml100k_dir), "--output-dir", str(out), *FAST,
                     "--metadata-uri", mariadb["uri"]]) == 0
    printed = capsys.readouterr().out
    lines = progress_states(printed)
    resolvers = {c for c in lines if c.endswith("_resolver")}
    assert resolvers and all(lines[c] == "cached" for c in set(lines) - resolvers), printed
    assert serving_snapshot(out) == before  # nothing pushed again
    first, second = _inspect(capsys, out, mariadb["uri"], "runs")
    assert first["cached"] == 0 and second["state"] == "complete"
    assert second["executed"] == len(resolvers)
    assert second["cached"] == len(second["components"]) - len(resolvers)


def test_lineage_metrics_and_report_from_the_server(first_run, mariadb, ml100k_dir, capsys):
    _, out = first_run
    chain = _inspect(capsys, out, mariadb["uri"], "lineage", "--pushed", "latest")
    assert chain["lineage"][0]["type"] == "PushedModel"
    assert chain["input"]["input_dir"] == str(ml100k_dir)  # back to the input data
    assert {"Model", "Examples", "TransformGraph"} <= {r["type"] for r in chain["lineage"]}
    assert all(r["uri"].startswith(str(out)) for r in chain["lineage"])
    metrics = _inspect(capsys, out, mariadb["uri"], "metrics")
    assert metrics["blessed"] is True and 0 < metrics["rmse"] < 2.0
    assert metrics["pushed_model"] == str(out / "serving" / "movierec" / _versions(out)[0])
    capsys.readouterr()
    assert cli.main(["report", "--output-dir", str(out), "--metadata-uri",
                     mariadb["uri"]]) == 0
    page = (out / "report.html").read_text()
    assert f"mysql://{USER}:***@127.0.0.1:{mariadb['port']}/{DATABASE}" in page
    _assert_no_password(page)


def test_two_runs_at_once_share_the_database(mariadb, tmp_path, ml100k_dir, capsys):
    from ml_metadata.proto import metadata_store_pb2 as pb

    outs = [tmp_path / "b", tmp_path / "c"]
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           metadata.PASSWORD_ENV: PASSWORD}
    # one with the password in its URI, one with it in the environment
    uris = [mariadb["uri"], mariadb["bare_uri"]]
    processes = [subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "--data-dir", str(ml100k_dir),
         "--output-dir", str(out), *FAST, "--metadata-uri", uri],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
        for out, uri in zip(outs, uris)]
    printed = [p.communicate(timeout=1200)[0] for p in processes]
    for process, text in zip(processes, printed):
        assert process.returncode == 0, text
        states = progress_states(text)  # all executed: nothing from another's cache
        assert states and set(states.values()) == {"done"}, text

    whole = metadata.connect(mariadb["uri"])  # the whole store, both pipelines (and A's)
    open_states = (pb.Execution.RUNNING, pb.Execution.NEW)
    assert not [e.id for e in whole.get_executions() if e.last_known_state in open_states]
    assert not [a.id for a in whole.get_artifacts() if a.state == pb.Artifact.PENDING]
    run_ids = []
    for out in outs:
        assert len(_versions(out)) == 1  # each pushed one model, into its own serving/
        [run] = _inspect(capsys, out, mariadb["uri"], "runs")
        assert run["state"] == "complete" and run["cached"] == 0
        run_ids.append(run["run_id"])
        artifacts = _inspect(capsys, out, mariadb["uri"], "artifacts")
        assert artifacts and all(a["uri"].startswith(str(out) + "/") for a in artifacts)
        assert all(a["state"] == "live" for a in artifacts)
        metrics = _inspect(capsys, out, mariadb["uri"], "metrics")
        assert metrics["pushed_model"].startswith(str(out / "serving"))
    assert len(set(run_ids)) == 2
    pipelines = {c.name for c in whole.get_contexts_by_type(metadata.PIPELINE_CONTEXT)}
    assert {configs.shared_pipeline_name(out) for out in outs} <= pipelines
    _assert_no_password(*printed)

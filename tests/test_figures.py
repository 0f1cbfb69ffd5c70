"""Every figure `movierec inspect` and the report show for a real run, each checked against
a source that does not go through them: per-component seconds against the progress lines
the same run printed (and their sum against its wall time), states against those lines
(also of a cached re-run), example counts against the records in the Examples artifact's
files, and the metrics against numpy on the pushed SavedModel's own answers.

One pipeline run on tiny data plus one cached re-run, shared by the module."""

import contextlib
import datetime
import io
import json
import pathlib
import re
import time

import numpy as np
import pytest
import tensorflow as tf

from trainer import saved_model

from pipeline import cli
from test_report import Page  # the report page parser

# the held-out protocol: its per-user recall / nDCG and independent figures
FAST = ["--epochs", "3", "--batch-size", "256", "--rmse-upper-bound", "2.0",
        "--split", "random"]
BEAM_ARGS = "--direct_num_workers=1 --direct_running_mode=in_memory"
# How far a component's seconds in ML Metadata may be from its progress line: the line
# spans TFX's "Component X is running" .. "is finished" log records, the execution its
# registration .. publication (measured on tiny data: 0.01-0.1 s apart), and the line
# rounds to 0.1 s.
TOLERANCE_S = 1.0
# `[  12.3s] Transform                          done   42.9s`
PROGRESS = re.compile(r"^\[\s*([\d.]+)s\] (\S+)\s+(done|cached)\s+([\d.]+)s$", re.M)
STATES = {"done": "executed", "cached": "cached"}
SPLITS = ("train", "eval", "catalog")
TOP_KS = (1, 5, 10, 50, 100)


def progress(printed: str) -> dict:
    """{component: (state, seconds)} from the progress lines of one run."""
    return {name: (state, float(seconds))
            for _, name, state, seconds in PROGRESS.findall(printed)}


def inspect(capsys, *args):
    capsys.readouterr()
    assert cli.main(["inspect", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def iso_seconds(text: str) -> float:
    """Epoch seconds of `inspect runs`' '2026-01-01T12:00:00Z' or the report's
    '2026-01-01 12:00:00 UTC'."""
    shape = "%Y-%m-%d %H:%M:%S UTC" if text.endswith(" UTC") else "%Y-%m-%dT%H:%M:%SZ"
    return datetime.datetime.strptime(text, shape).replace(
        tzinfo=datetime.timezone.utc).timestamp()


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def runs(tmp_path_factory, ml100k_dir):
    """The output directory and, per run (a first one, then an unchanged cached re-run),
    what it printed, its progress lines and when it started and ended."""
    out = tmp_path_factory.mktemp("figures") / "output"
    made = []
    for _ in range(2):
        printed = io.StringIO()
        started = time.time()
        with contextlib.redirect_stdout(printed):
            rc = cli.main(["run", "--data-dir", str(ml100k_dir), "--output-dir", str(out),
                           *FAST, f"--beam-pipeline-args={BEAM_ARGS}"])
        finished = time.time()
        assert rc == 0, printed.getvalue()
        made.append({"printed": printed.getvalue(), "progress": progress(printed.getvalue()),
                     "started": started, "finished": finished,
                     "wall": finished - started})
    return out, made


@pytest.fixture(scope="module")
def examples(runs):
    """{split: number of records} counted in the files of the one Examples artifact."""
    out, _ = runs
    [artifact] = (out / "pipeline" / "MovieLensExampleGen" / "examples").iterdir()
    counts = {}
    for split in SPLITS:
        files = sorted(str(p) for p in (artifact / f"Split-{split}").iterdir())
        counts[split] = sum(1 for _ in tf.data.TFRecordDataset(files,
                                                               compression_type="GZIP"))
    return {"uri": str(artifact), "counts": counts}


@pytest.fixture(scope="module")
def recomputed(runs, examples):
    """RMSE, MAE and top-K accuracies of the pushed SavedModel on the eval split, from its
    `serving_default` and `score_catalog` answers with numpy."""
    out, _ = runs
    [version] = (out / "serving" / "movierec").iterdir()
    model = tf.saved_model.load(str(version))
    files = sorted(str(p) for p in pathlib.Path(examples["uri"], "Split-eval").iterdir())
    spec = {"user_id": tf.io.FixedLenFeature([1], tf.string),
            "movie_id": tf.io.FixedLenFeature([1], tf.string),
            "rating": tf.io.FixedLenFeature([1], tf.float32),
            "timestamp": tf.io.FixedLenFeature([1], tf.int64)}
    catalog = [m.decode() for m in model.movie_ids.numpy()]
    column = {m: i for i, m in enumerate(catalog)}
    errors, ranks = [], []
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(256):
        parsed = {k: v.numpy().reshape(-1)
                  for k, v in tf.io.parse_example(batch, spec).items()}
        predicted = model.signatures["serving_default"](examples=batch)["rating"].numpy()
        errors.append(predicted.reshape(-1).astype(np.float64) - parsed["rating"])
        scores = saved_model.call(model, "score_catalog", user_id=tf.constant(parsed["user_id"]),
            timestamp=tf.constant(parsed["timestamp"]))["scores"].numpy()
        assert scores.shape == (len(parsed["movie_id"]), len(catalog))
        for row, movie in zip(scores, parsed["movie_id"]):
            truth = column.get(movie.decode())
            # rank: how many movies score above the rated one (a movie outside the
            # catalog is never found)
            ranks.append(len(catalog) if truth is None else int(np.sum(row > row[truth])))
    errors, ranks = np.concatenate(errors), np.array(ranks)
    assert len(errors) == examples["counts"]["eval"]
    return {"rmse": float(np.sqrt(np.mean(errors ** 2))),
            "mae": float(np.mean(np.abs(errors))),
            "example_count": int(len(errors)), "version": version.name,
            **{f"top_{k}_accuracy": float(np.mean(ranks < k)) for k in TOP_KS}}


@pytest.fixture(scope="module")
def page(runs):
    out, _ = runs
    path = out / "report.html"
    assert cli.main(["report", "--output-dir", str(out), "--output", str(path)]) == 0
    return Page(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------- tests
def test_component_seconds_match_the_progress_lines(runs, capsys):
    out, made = runs
    summaries = inspect(capsys, "runs", "--output-dir", str(out))
    assert len(summaries) == len(made)
    for run, summary in zip(made, summaries):
        lines = run["progress"]
        shown = {c["component"]: c["seconds"] for c in summary["components"]}
        assert set(shown) == set(lines), (shown, run["printed"])
        off = {name: (shown[name], lines[name][1]) for name in lines
               if abs(shown[name] - lines[name][1]) > TOLERANCE_S}
        assert not off, f"inspect runs vs progress lines (s): {off}"
        total = sum(shown.values())
        assert total <= summary["executions_seconds"] + 0.05  # rounded to 0.1 s
        assert total <= summary["wall_seconds"] + 0.05 <= run["wall"] + 0.1
        # the run's span lies inside the command's
        assert run["started"] - 1 <= iso_seconds(summary["start"])
        assert iso_seconds(summary["start"]) <= iso_seconds(summary["end"]) <= run["finished"]


def test_states_match_the_progress_lines(runs, capsys):
    out, made = runs
    summaries = inspect(capsys, "runs", "--output-dir", str(out))
    for run, summary in zip(made, summaries):
        shown = {c["component"]: c["state"] for c in summary["components"]}
        assert shown == {name: STATES[state] for name, (state, _) in run["progress"].items()}
        assert summary["executed"] == sum(s == "executed" for s in shown.values())
        assert summary["cached"] == sum(s == "cached" for s in shown.values())
    first, second = summaries
    assert first["cached"] == 0 and first["state"] == "complete"
    resolvers = {c["component"] for c in second["components"]
                 if c["component"].endswith("_resolver")}
    assert second["cached"] == len(second["components"]) - len(resolvers) > 0


def test_example_counts_match_the_examples_files(runs, examples, page, capsys):
    out, _ = runs
    counts = examples["counts"]
    [artifact] = inspect(capsys, "artifacts", "--type", "Examples", "--output-dir", str(out))
    assert artifact["uri"] == examples["uri"]
    assert json.loads(artifact["properties"]["split_counts"]) == counts
    for split, n in counts.items():
        assert artifact["properties"][f"num_{split}"] == n
    for summary in inspect(capsys, "runs", "--output-dir", str(out)):
        metrics = inspect(capsys, "metrics", "--run", summary["run_id"],
                          "--output-dir", str(out))
        assert metrics["example_count"] == counts["eval"]
        assert metrics["examples"] == examples["uri"]
    # the report: examples per split (StatisticsGen), eval examples per run (TFMA), the
    # Trainer's examples
    assert page.pairs("split") == {s: str(counts[s]) for s in ("train", "eval")}
    assert [r["eval examples"] for r in page.table("#")] == [str(counts["eval"])] * 2
    training = page.pairs("training run")
    assert (int(training["train_examples"]) + int(training.get("validation_examples", 0))
            == counts["train"])
    assert int(training["catalog_size"]) == counts["catalog"]


def test_metrics_match_numpy_on_the_pushed_model(runs, recomputed, page, capsys):
    out, made = runs
    summaries = inspect(capsys, "runs", "--output-dir", str(out))
    keys = ["rmse", "mae", *(f"top_{k}_accuracy" for k in TOP_KS)]
    for summary in summaries:
        metrics = inspect(capsys, "metrics", "--run", summary["run_id"],
                          "--output-dir", str(out))
        for key in keys:
            assert metrics[key] == pytest.approx(recomputed[key], abs=1e-5), key
        assert metrics["blessed"] is True
        assert metrics["pushed_model"] == str(out / "serving" / "movierec"
                                              / recomputed["version"])
    diff = inspect(capsys, "diff", summaries[0]["run_id"], summaries[1]["run_id"],
                   "--output-dir", str(out))
    for key in keys:
        entry = diff["metrics"][key]
        assert entry["a"] == pytest.approx(recomputed[key], abs=1e-5), key
        assert entry["b"] == pytest.approx(recomputed[key], abs=1e-5), key
        assert entry["delta"] == pytest.approx(0.0, abs=1e-9)

    # the report, to its 4 decimals
    rows = page.table("#")
    assert [r["run"] for r in rows] == [s["run_id"] for s in summaries]
    for row, summary, run in zip(rows, summaries, made):
        for key in ("rmse", "mae", "top_10_accuracy", "top_100_accuracy"):
            assert float(row[key]) == pytest.approx(recomputed[key], abs=6e-5), key
        assert (row["blessed"], row["pushed version"]) == ("yes", recomputed["version"])
        assert run["started"] - 1 <= iso_seconds(row["started"]) <= run["finished"]
    blessing = page.pairs("blessing")
    assert blessing["run"] == summaries[-1]["run_id"]
    for key in ("rmse", "top_100_accuracy"):
        assert float(blessing[key]) == pytest.approx(recomputed[key], abs=6e-5), key


# ------------------------------------------- the same figure without a pipeline run: stores
def _store(path):
    """An empty read-write SQLite store, as a new pipeline creates it."""
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(path)
    config.sqlite.connection_mode = (
        metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE)
    return metadata_store.MetadataStore(config)


def _fake_run(store, components, run_type="pipeline_run"):
    """A run whose executions are published (COMPLETE, with an output) one after the other,
    except those named 'failed' (FAILED, no output): {component: execution id}."""
    from ml_metadata.proto import metadata_store_pb2 as pb

    def type_id(kind, name):
        t = getattr(pb, f"{kind}Type")(name=name)
        return getattr(store, f"put_{kind.lower()}_type")(t)

    [run] = store.put_contexts([pb.Context(type_id=type_id("Context", run_type),
                                           name="run-1")])
    node_type, execution_type = type_id("Context", "node"), type_id("Execution", "Component")
    artifact_type = type_id("Artifact", "Examples")
    ids = {}
    for name in components:
        [node] = store.put_contexts([pb.Context(type_id=node_type, name=f"movierec.{name}")])
        failed = name == "failed"
        execution = pb.Execution(type_id=execution_type, last_known_state=pb.Execution.RUNNING)
        [ids[name]] = store.put_executions([execution])
        time.sleep(0.2)  # the execution runs
        execution = store.get_executions_by_id([ids[name]])[0]
        execution.last_known_state = pb.Execution.FAILED if failed else pb.Execution.COMPLETE
        attribution = store.get_contexts_by_id([run, node])
        if failed:
            store.put_execution(execution, [], attribution)
        else:
            artifact = pb.Artifact(type_id=artifact_type, uri=f"/tmp/{name}",
                                   state=pb.Artifact.LIVE)
            store.put_execution(execution, [(artifact, pb.Event(type=pb.Event.OUTPUT))],
                                attribution)
    return ids


def _seconds(path):
    from pipeline import metadata

    store = metadata.connect(str(path))
    [summary] = [metadata.run_summary(store, c) for c in metadata.runs(store)]
    return {c["component"]: c["seconds"] for c in summary["components"]}, summary


def test_annotations_written_after_the_run_do_not_lengthen_it(tmp_path):
    from pipeline import metadata

    path = tmp_path / "metadata.sqlite"
    ids = _fake_run(_store(path), ["ExampleGen", "failed", "Trainer"])
    before, _ = _seconds(path)
    assert all(0.15 <= s < 1.0 for s in before.values()), before  # nothing else wrote
    time.sleep(1.5)  # the rest of the run
    metadata.annotate_run(str(path), {"wall_seconds": 5.0}, beam_components=("ExampleGen",
                          "failed"), beam_args=["--direct_num_workers=1"])
    after, summary = _seconds(path)
    assert after == before  # the annotated executions included
    assert summary["executions_seconds"] < 1.5 and summary["wall_seconds"] == 5.0
    store = metadata.connect(str(path))
    for name in ("ExampleGen", "failed"):
        [execution] = store.get_executions_by_id([ids[name]])
        assert metadata.properties(execution)["beam_pipeline_args"] == (
            '["--direct_num_workers=1"]')
        assert execution.last_update_time_since_epoch - metadata.execution_end(
            execution) >= 1400  # MLMD's own time did move
    metadata.annotate_run(str(path), {}, beam_components=("ExampleGen",), beam_args=[])
    assert _seconds(path)[0] == before  # annotated twice: the first record holds


def test_stores_annotated_before_the_fix_and_other_orchestrators(tmp_path):
    """An old store: the annotation moved last_update_time and recorded no end; the output
    events still date the publication. An Airflow run (`run` contexts, never annotated):
    last_update_time as it is."""
    from ml_metadata.proto import metadata_store_pb2 as pb
    from pipeline import metadata

    old = tmp_path / "old.sqlite"
    store = _store(old)
    ids = _fake_run(store, ["ExampleGen", "Trainer"])
    before, _ = _seconds(old)
    time.sleep(1.0)
    [execution] = store.get_executions_by_id([ids["ExampleGen"]])
    execution.custom_properties["beam_pipeline_args"].string_value = "[]"
    store.put_executions([execution])  # what annotate_run did before END_PROPERTY
    after = _seconds(old)[0]
    # dated by the output event now, by last_update_time before: ML Metadata writes the
    # two in one transaction, a millisecond or so apart
    assert after.keys() == before.keys()
    assert all(abs(after[c] - before[c]) <= 0.005 for c in before), (before, after)

    airflow = tmp_path / "airflow.sqlite"
    _fake_run(_store(airflow), ["ExampleGen", "failed"], run_type="run")
    seconds, summary = _seconds(airflow)
    assert set(seconds) == {"ExampleGen", "failed"}
    assert all(0.15 <= s < 1.0 for s in seconds.values()), seconds
    assert summary["wall_seconds"] == summary["executions_seconds"] < 1.5

    # an execution a killed run left open, closed by the next run: how long it ran is
    # not known
    killed = pb.Execution(create_time_since_epoch=1000, last_update_time_since_epoch=90_000)
    killed.custom_properties["interrupted"].string_value = "killed"
    assert metadata.execution_seconds(killed) is None
    plain = pb.Execution(create_time_since_epoch=1000, last_update_time_since_epoch=3500)
    assert metadata.execution_seconds(plain) == 2.5
    assert metadata.execution_seconds(plain, output_time=2000) == 1.0
    assert metadata.execution_seconds(plain, output_time=9000) == 2.5  # not after the end
    plain.custom_properties[metadata.END_PROPERTY].int_value = 1250
    assert metadata.execution_seconds(plain, output_time=2000) == 0.25

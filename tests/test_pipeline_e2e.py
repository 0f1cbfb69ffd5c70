"""End to end: the real TFX pipeline (LocalDagRunner, Beam, TFMA) on tiny MovieLens-shaped
data, driven through the `movierec` CLI as a user would, then the pushed SavedModel."""

import json
import os
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow as tf

from trainer import saved_model

from components.movielens_example_gen import synth
from pipeline import cli
from conftest import progress_states, serving_snapshot

FAST = ["--epochs", "3", "--batch-size", "256", "--rmse-upper-bound", "2.0"]
BEAM_ARGS = "--direct_num_workers=1 --direct_running_mode=in_memory"


def _versions(output_dir):
    serving = pathlib.Path(output_dir, "serving", "movierec")
    return sorted(p.name for p in serving.iterdir()) if serving.exists() else []


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, ml100k_dir):
    out = tmp_path_factory.mktemp("run") / "output"
    rc = cli.main(["run", "--data-dir", str(ml100k_dir), "--output-dir", str(out), *FAST,
                   f"--beam-pipeline-args={BEAM_ARGS}"])
    return rc, out


def test_run_pushes_a_model(first_run, capsys):
    rc, out = first_run
    assert rc == 0
    versions = _versions(out)
    assert len(versions) == 1 and versions[0].isdigit()  # TF Serving layout: <int>/
    assert (out / "serving" / "movierec" / versions[0] / "saved_model.pb").is_file()
    assert (out / "metadata.sqlite").is_file()


def test_inspect_metrics_json(first_run, capsys):
    _, out = first_run
    capsys.readouterr()
    assert cli.main(["inspect", "metrics", "--output-dir", str(out), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    for key in ("rmse", "top_1_accuracy", "top_5_accuracy", "top_10_accuracy",
                "top_50_accuracy", "top_100_accuracy", "blessed", "pushed_model"):
        assert key in metrics
    assert metrics["blessed"] is True
    assert metrics["pushed_model"].endswith(_versions(out)[0])
    assert 0.0 < metrics["rmse"] < 2.0
    accuracies = [metrics[f"top_{k}_accuracy"] for k in (1, 5, 10, 50, 100)]
    assert accuracies == sorted(accuracies)
    assert accuracies[-1] == 1.0  # the tiny catalog has 80 movies: top-100 holds them all
    assert metrics["example_count"] > 0


def test_pushed_model_answers_both_signatures(first_run, ml100k_dir):
    _, out = first_run
    path = out / "serving" / "movierec" / _versions(out)[0]
    model = tf.saved_model.load(str(path))
    assert {"serving_default", "recommend", "recommend_at", "rate"} <= set(model.signatures)
    rec = saved_model.call(model, "recommend", user_id=tf.constant(["1", "unknown-user"]))
    assert rec["movie_ids"].shape == (2, 10)
    assert rec["known_user"].numpy().tolist() == [True, False]
    examples = sorted((out / "pipeline" / "MovieLensExampleGen" / "examples").glob(
        "*/Split-eval/*"))
    serialized = [r.numpy() for r in tf.data.TFRecordDataset(
        [str(p) for p in examples], compression_type="GZIP").take(20)]
    rating = model.signatures["serving_default"](examples=tf.constant(serialized))["rating"]
    assert rating.shape == (20,) and np.all(np.isfinite(rating.numpy()))


def _inspect(capsys, *args):
    capsys.readouterr()
    assert cli.main(["inspect", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_unchanged_rerun_is_cached_and_pushes_nothing(first_run, ml100k_dir, capsys):
    _, out = first_run
    before = serving_snapshot(out)
    capsys.readouterr()
    assert cli.main(["run", "--data-dir", str(ml100k_dir), "--output-dir", str(out), *FAST,
                     f"--beam-pipeline-args={BEAM_ARGS}"]) == 0
    lines = progress_states(capsys.readouterr().out)
    resolvers = {c for c in lines if c.endswith("_resolver")}
    assert lines and all(lines[c] == "cached" for c in set(lines) - resolvers), lines
    assert serving_snapshot(out) == before  # the same model is not pushed again

    runs = _inspect(capsys, "runs", "--output-dir", str(out))
    first, second = runs[0], runs[-1]
    assert first["cached"] == 0 and first["state"] == "complete"
    assert second["executed"] == len(resolvers)
    assert second["cached"] == len(second["components"]) - len(resolvers)
    assert all(r["wall_seconds"] > 0 for r in (first, second))
    # the Beam args reached the record of every Beam-powered execution
    from pipeline import metadata
    from pipeline.pipeline import BEAM_COMPONENTS

    store = metadata.connect(str(out))
    executions = {metadata._Index(store).component(e.id): e
                  for e in store.get_executions_by_context(metadata.runs(store)[0].id)}
    for name in BEAM_COMPONENTS:
        recorded = metadata.properties(executions[name])["beam_pipeline_args"]
        assert json.loads(recorded) == BEAM_ARGS.split()


def test_inspect_artifacts_lineage_and_diff(first_run, ml100k_dir, capsys):
    _, out = first_run
    models = _inspect(capsys, "artifacts", "--type", "Model", "--output-dir", str(out))
    assert len(models) == 1 and models[0]["producer"] == "Trainer"
    assert models[0]["uri"].startswith(str(out))

    chain = _inspect(capsys, "lineage", "--pushed", "latest", "--output-dir", str(out))
    rows = chain["lineage"]
    assert rows[0]["type"] == "PushedModel" and rows[0]["depth"] == 0
    assert rows[0]["properties"]["pushed_destination"].endswith(_versions(out)[-1])
    types = {r["type"] for r in rows}
    assert {"ModelBlessing", "ModelEvaluation", "movierec.RetrievalEvaluation", "Model",
            "TransformGraph", "Schema", "ExampleStatistics", "ExampleAnomalies",
            "Examples"} <= types
    assert chain["input"]["input_dir"] == os.path.abspath(ml100k_dir)
    assert len(chain["input"]["input_fingerprint"]) >= 16
    # by artifact id too, and readable for people
    capsys.readouterr()
    assert cli.main(["inspect", "lineage", str(rows[0]["id"]), "--output-dir", str(out)]) == 0
    text = capsys.readouterr().out
    assert "PushedModel" in text and f"input data: {os.path.abspath(ml100k_dir)}" in text

    runs = _inspect(capsys, "runs", "--output-dir", str(out))
    diff = _inspect(capsys, "diff", runs[0]["run_id"], runs[-1]["run_id"],
                    "--output-dir", str(out))
    assert diff["metrics"]["rmse"]["delta"] == 0.0  # the cached re-run: the same model
    capsys.readouterr()
    assert cli.main(["inspect", "diff", runs[0]["run_id"], "--output-dir", str(out)]) == 2
    assert "two run ids" in capsys.readouterr().err


@pytest.mark.parametrize("corruption", ["rating_out_of_range", "wrong_delimiter",
                                        "missing_file"])
def test_bad_input_fails_in_one_line_and_keeps_the_pushed_model(
        first_run, tmp_path, synth_data, capsys, corruption):
    _, out = first_run
    before = serving_snapshot(out)
    bad = synth.write_ml100k(tmp_path / "bad", synth_data)
    lines = (bad / "u.data").read_text().splitlines()
    if corruption == "rating_out_of_range":
        fields = lines[7].split("\t")
        lines[7] = "\t".join([fields[0], fields[1], "9", fields[3]])
        (bad / "u.data").write_text("\n".join(lines) + "\n")
    elif corruption == "wrong_delimiter":
        (bad / "u.data").write_text("\n".join(l.replace("\t", ",") for l in lines) + "\n")
    else:
        os.remove(bad / "u.item")
    capsys.readouterr()
    rc = cli.main(["run", "--data-dir", str(bad), "--output-dir", str(out), *FAST])
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1 and err.startswith("movierec: error:")
    expected = {"rating_out_of_range": "u.data line 8", "wrong_delimiter": "u.data line 1",
                "missing_file": "no MovieLens files"}[corruption]
    assert expected in err
    assert serving_snapshot(out) == before  # the pushed model is untouched


def test_anomalies_stop_the_run_before_transform(first_run, tmp_path, synth_data, capsys):
    """Data that parses but breaks the curated schema (an occupation ml-100k does not have)
    stops at the gate, naming the feature."""
    _, out = first_run
    before = serving_snapshot(out)
    bad = synth.write_ml100k(tmp_path / "drift", synth_data)
    users = (bad / "u.user").read_text().replace("|writer|", "|astronaut|")
    (bad / "u.user").write_text(users)
    capsys.readouterr()
    rc = cli.main(["run", "--data-dir", str(bad), "--output-dir", str(out), *FAST])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1
    assert "user_occupation" in err
    assert serving_snapshot(out) == before


def test_evaluate_the_pushed_model_from_outside(first_run, ml100k_dir, tmp_path, capsys):
    """`movierec evaluate` queries the signatures for raw ratings; on exactly the split's
    ratings, replayed (the default split is a time split), it reproduces the numbers the
    pipeline recorded."""
    _, out = first_run
    capsys.readouterr()
    assert cli.main(["inspect", "metrics", "--output-dir", str(out), "--json"]) == 0
    recorded = json.loads(capsys.readouterr().out)
    assert recorded["protocol"] == "replay"

    data = tmp_path / "data"
    shutil.copytree(ml100k_dir, data)
    spec = {k: tf.io.FixedLenFeature([1], t) for k, t in (
        ("user_id", tf.string), ("movie_id", tf.string), ("rating", tf.float32),
        ("timestamp", tf.int64))}
    for split in ("train", "eval"):
        files = [str(p) for p in pathlib.Path(recorded["examples"]).glob(f"Split-{split}/*")]
        with open(data / f"{split}.data", "w") as f:
            for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
                e = {k: v.numpy()[0]
                     for k, v in tf.io.parse_single_example(record, spec).items()}
                f.write(f"{e['user_id'].decode()}\t{e['movie_id'].decode()}\t"
                        f"{int(e['rating'])}\t{e['timestamp']}\n")
    assert cli.main(["evaluate", "--model", str(out / "serving" / "movierec"),
                     "--data-dir", str(data), "--ratings-file", "eval.data",
                     "--protocol", "replay", "--train-ratings-file", "train.data",
                     "--json"]) == 0
    outside = json.loads(capsys.readouterr().out)
    assert outside["rating_examples"] == recorded["example_count"]
    assert outside["rmse"] == pytest.approx(recorded["rmse"], abs=1e-3)
    for k in (1, 5, 10, 50, 100):
        assert outside[f"top_{k}_accuracy"] == pytest.approx(
            recorded[f"top_{k}_accuracy"], abs=1e-6)


def test_a_worse_model_is_not_blessed_and_not_pushed(first_run, ml100k_dir, capsys):
    """A model trained for a fraction of an epoch after a good one was pushed: the run
    succeeds, upstream components come from the cache, nothing is pushed."""
    _, out = first_run
    before, versions = serving_snapshot(out), _versions(out)
    capsys.readouterr()
    # one step, and no factorization blend (fitted after training, it would rate well
    # however short the training was)
    rc = cli.main(["run", "--data-dir", str(ml100k_dir), "--output-dir", str(out), *FAST,
                   "--hparam", "max_steps=1", "--hparam", "mf_dim=0"])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "MovieLensExampleGen" in printed and "cached" in printed
    assert "not pushed" in printed
    assert _versions(out) == versions and serving_snapshot(out) == before
    assert cli.main(["inspect", "metrics", "--output-dir", str(out), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["blessed"] is False and metrics["pushed_model"] is None
    assert metrics["blessing_reason"].startswith(("rating:", "retrieval:"))


def test_tune_feeds_the_trainer_the_best_hyperparameters(tmp_path, ml100k_dir, capsys):
    from trainer.tuning import SEARCH_SPACE

    out = tmp_path / "tuned"
    rc = cli.main(["tune", "--data-dir", str(ml100k_dir), "--output-dir", str(out),
                   "--trials", "2", "--epochs", "1", "--batch-size", "256",
                   "--rmse-upper-bound", "2.0"])
    printed = capsys.readouterr().out
    assert rc == 0 and "Tuner" in printed
    line = next(l for l in printed.splitlines() if l.startswith("tuned hyperparameters: "))
    tuned = json.loads(line.split(": ", 1)[1])
    assert set(tuned) == set(SEARCH_SPACE)
    assert all(tuned[k] in SEARCH_SPACE[k] for k in tuned)
    training = json.loads(next((out / "pipeline" / "Trainer" / "model_run").glob(
        "*/training.json")).read_text())
    assert all(training["hparams"][k] == tuned[k] for k in tuned)  # the Trainer used them


def test_new_data_reruns_examplegen_and_warm_starts_the_trainer(first_run, ml100k_dir,
                                                               tmp_path, capsys):
    """Continuous training: changed input files miss the cache from ExampleGen on, and
    --warm-start initializes the Trainer from the latest blessed model."""
    _, out = first_run
    data = tmp_path / "more-data"
    shutil.copytree(ml100k_dir, data)
    ratings = (data / "u.data").read_text().splitlines()
    (data / "u.data").write_text("\n".join(ratings[:-50]) + "\n")  # a different dataset
    capsys.readouterr()
    assert cli.main(["run", "--data-dir", str(data), "--output-dir", str(out), *FAST,
                     "--warm-start"]) == 0
    lines = progress_states(capsys.readouterr().out)
    for component in ("MovieLensExampleGen", "StatisticsGen", "Transform", "Trainer"):
        assert lines[component] == "done", lines
    runs = _inspect(capsys, "runs", "--output-dir", str(out))
    trainer = next(c for c in runs[-1]["components"] if c["component"] == "Trainer")
    training = json.loads(next(
        (out / "pipeline" / "Trainer" / "model_run" / str(trainer["execution_id"])).glob(
            "training.json")).read_text())
    warm = training["warm_start"]
    assert warm["base_model"] and warm["copied"] + warm["remapped"] > 0
    assert warm["fresh"] == 0

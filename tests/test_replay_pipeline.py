"""A time split is measured by the replay protocol (issue 13), in the pipeline and from
outside: `movierec run` (its default split is the time split) on tiny data, then its metrics against a slow,
obvious Python loop over the model's own `score_catalog` answers (each request given its
user's earlier ratings and demographics), and against `movierec
evaluate --protocol replay` on the same ratings as two files of a MovieLens directory."""

import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

from pipeline import cli

TOP_KS = (1, 5, 10, 50, 100)


def _json(capsys, *argv) -> dict:
    capsys.readouterr()
    assert cli.main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def time_run(default_run):
    """`movierec run` on tiny data: its default split is the time split."""
    return default_run


def _ratings(uri: str):
    """(user, movie, rating, timestamp) of every example of an Examples split, read with
    tf.data and the proto, not through the product's evaluators."""
    files = sorted(tf.io.gfile.glob(f"{uri}/*.gz"))  # in the order the evaluators read
    out = []
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        example = tf.train.Example.FromString(record.numpy())
        f = example.features.feature
        out.append((f["user_id"].bytes_list.value[0].decode(),
                    f["movie_id"].bytes_list.value[0].decode(),
                    f["rating"].float_list.value[0], f["timestamp"].int64_list.value[0]))
    return out


def _demographics(uri: str) -> dict:
    """user -> (age, gender, occupation, zip) as the examples of a split carry them."""
    out = {}
    for record in tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(f"{uri}/*.gz")),
                                          compression_type="GZIP"):
        f = tf.train.Example.FromString(record.numpy()).features.feature
        out[f["user_id"].bytes_list.value[0].decode()] = (
            f["user_age"].int64_list.value[0], f["user_gender"].bytes_list.value[0],
            f["user_occupation"].bytes_list.value[0], f["user_zip"].bytes_list.value[0])
    return out


def test_a_time_split_is_measured_by_replay(time_run, capsys):
    shown = _json(capsys, "inspect", "metrics", "--output-dir", str(time_run))
    assert shown["protocol"] == "replay"
    train = _ratings(f"{shown['examples']}/Split-train")
    held = _ratings(f"{shown['examples']}/Split-eval")
    assert max(t for *_, t in train) < min(t for *_, t in held)  # one time cutoff

    model = tf.saved_model.load(f"{shown['model']}/Format-Serving")
    catalog = [m.decode() for m in model.movie_ids.numpy()]
    from trainer import saved_model

    def score(**inputs):
        return saved_model.call(model, "score_catalog", **inputs)
    ranks, filtered = [], []
    everything = train + held
    people = _demographics(f"{shown['examples']}/Split-eval")
    for user, movie, _, stamp in sorted(held, key=lambda r: r[3]):
        # the request's history: the user's ratings before it, newest first (ties: the
        # later example first, as a stable sort by time read backwards gives)
        earlier = sorted(((m, r, t) for u, m, r, t in everything if u == user and t < stamp),
                         key=lambda e: e[2])[::-1]
        age, gender, occupation, zip_code = people[user]
        scores = score(user_id=tf.constant([user]), timestamp=tf.constant([stamp], tf.int64),
                       history_movie_ids=tf.constant([[m for m, _, _ in earlier]], tf.string),
                       history_ratings=tf.constant([[r for _, r, _ in earlier]], tf.float32),
                       history_timestamps=tf.constant([[t for *_, t in earlier]], tf.int64),
                       user_age=tf.constant([age], tf.int64), user_gender=tf.constant([gender]),
                       user_occupation=tf.constant([occupation]),
                       user_zip=tf.constant([zip_code]))["scores"].numpy()[0]
        truth = scores[catalog.index(movie)]
        ranks.append(sum(s > truth for s in scores))
        before = {m for u, m, _, t in everything if u == user and t < stamp} - {movie}
        filtered.append(sum(s > truth for m, s in zip(catalog, scores) if m not in before))
    for k in TOP_KS:
        assert shown[f"top_{k}_accuracy"] == pytest.approx(np.mean(np.array(ranks) < k),
                                                           abs=1e-9)
        assert shown[f"filtered_top_{k}_accuracy"] == pytest.approx(
            np.mean(np.array(filtered) < k), abs=1e-9)
    # the history hides movies, so filtering can only help; here it does
    assert shown["filtered_top_10_accuracy"] > shown["top_10_accuracy"]
    assert shown["requests"] == len(held)


def _contexts(uri: str) -> list:
    """(user, timestamp, sorted (movie, rating, timestamp) of its history, or None where the
    example has no history feature) of every example of a split, read with the proto."""
    out = []
    for record in tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(f"{uri}/*.gz")),
                                          compression_type="GZIP"):
        f = tf.train.Example.FromString(record.numpy()).features.feature
        history = None
        if "history_movie_ids" in f:
            history = sorted(zip((m.decode() for m in f["history_movie_ids"].bytes_list.value),
                                 f["history_ratings"].float_list.value,
                                 f["history_timestamps"].int64_list.value))
        out.append((f["user_id"].bytes_list.value[0].decode(),
                    f["timestamp"].int64_list.value[0], history))
    return out


def test_the_summary_shows_the_replay_numbers(time_run, capsys):
    shown = _json(capsys, "inspect", "metrics", "--output-dir", str(time_run))
    assert cli.main(["inspect", "metrics", "--output-dir", str(time_run)]) == 0
    lines = {line.split()[0]: line.split()[1:]
             for line in capsys.readouterr().out.splitlines()[1:]}
    assert lines["protocol"] == ["replay"]
    for name, prefix in (("retrieval", ""), ("filtered", "filtered_")):
        values = dict(zip(lines[name][::2], lines[name][1::2]))
        assert values == {f"top{k}": f"{shown[f'{prefix}top_{k}_accuracy']:.4f}"
                          for k in TOP_KS}
    assert lines["rating"][:2] == ["rmse", f"{shown['rmse']:.4f}"]


def test_eval_examples_carry_their_request_context(time_run, capsys):
    """On a time split each eval example holds what its replay request knows: its user's
    ratings strictly before it, in train or eval; so TFMA, reading those examples through
    serving_default, measures the replay's RMSE."""
    shown = _json(capsys, "inspect", "metrics", "--output-dir", str(time_run))
    everyone = (_ratings(f"{shown['examples']}/Split-train")
                + _ratings(f"{shown['examples']}/Split-eval"))
    assert all(h is None for *_, h in _contexts(f"{shown['examples']}/Split-train"))
    held = _contexts(f"{shown['examples']}/Split-eval")
    assert len(held) == shown["requests"]
    for user, stamp, history in held:
        assert history == sorted((m, r, t) for u, m, r, t in everyone if u == user and t < stamp)
    assert sum(len(h) for *_, h in held) > len(held)

    from pipeline import metadata

    evaluation = sorted(tf.io.gfile.glob(f"{time_run}/pipeline/Evaluator/evaluation/*"))[-1]
    tfma_metrics = metadata._tfma_metrics(evaluation)
    assert tfma_metrics["example_count"] == shown["requests"]
    assert tfma_metrics["rmse"] == pytest.approx(shown["rmse"], abs=1e-6)


def test_evaluate_replays_outside_ratings_as_the_pipeline_does(time_run, ml100k_dir,
                                                               tmp_path, capsys):
    shown = _json(capsys, "inspect", "metrics", "--output-dir", str(time_run))
    train = _ratings(f"{shown['examples']}/Split-train")
    held = _ratings(f"{shown['examples']}/Split-eval")
    data = tmp_path / "ml-100k"
    shutil.copytree(ml100k_dir, data)
    for name, rows in (("old.base", train), ("new.test", held)):
        (data / name).write_text("".join(f"{u}\t{m}\t{int(r)}\t{t}\n"
                                         for u, m, r, t in rows))
    replayed = _json(capsys, "evaluate", "--model", f"{shown['model']}/Format-Serving",
                     "--data-dir", str(data), "--protocol", "replay",
                     "--ratings-file", "new.test", "--train-ratings-file", "old.base")
    assert replayed["protocol"] == "replay" and replayed["requests"] == len(held)
    for key in ("top_10_accuracy", "top_100_accuracy", "filtered_top_10_accuracy",
                "filtered_top_100_accuracy", "mrr", "filtered_mrr"):
        assert replayed[key] == pytest.approx(shown[key], abs=1e-9), key
    assert replayed["rmse"] == pytest.approx(shown["rmse"], abs=1e-4)

    # the held-out protocol is still the default of `evaluate`
    plain = _json(capsys, "evaluate", "--model", f"{shown['model']}/Format-Serving",
                  "--data-dir", str(data), "--ratings-file", "new.test")
    assert plain["protocol"] == "heldout"  # no request history: its own numbers
    assert plain["retrieval_examples"] == replayed["retrieval_examples"]

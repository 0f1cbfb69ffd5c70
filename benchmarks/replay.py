"""Replay benchmark (issue 13): the anchors of the replay protocol, and optionally movierec,
on the same time split, from one invocation.

    .venv/bin/python benchmarks/replay.py [--data-dir ../shared/data/ml-100k]
        [--work-dir /tmp/movierec-replay] [--movierec-model OUT/serving/movierec]
        [--run-movierec] [--outside]

The protocol is trainer/replay.py's: the ratings from the cutoff `movierec run --split
time` uses (trainer.replay.time_cutoff, the newest 20%) are replayed in time order, each a
request that knows its user's ratings strictly before it; top-K over the full catalog (the
layout's movie file), the same with the request's history removed, RMSE. Rows
(trainer/anchors.py): most popular, EASE on the request's history, global mean + movie
biases, + the user bias of the request's history, + item-kNN on baseline residuals of the
request's history. With --movierec-model (a pushed serving dir, or one version), or
--run-movierec (a `movierec run --split time` into --work-dir first; its trained model is
scored even when the blessing refused it), also movierec through its exported
`score_catalog` and `serving_default` signatures, each request given its history (and the
user's demographics) as the signatures' context inputs.
Any layout `movierec run` reads works with --data-dir. Prints a markdown table; writes
replay.json into --work-dir. Wall time per row: fitting and scoring every request.

--outside (issue 13's outside check, with --run-movierec): a second model is trained on a
directory that holds only the ratings before the cutoff (its ratings file and
`oldest.base`, all of them, as the fold `fold:oldest`; `oldest.test`, their newest day, is
the fold's eval split, read only by the pipeline's evaluators). The newest ratings are then
asked of it from outside, through the public signatures only: `recommend_at` (k = 100, each
rating's own timestamp, history = the user's earlier ratings, the user's demographics,
`exclude_rated` false and true) for the top-K accuracies (the rank of the rated movie in
the list; filtered: with exclude_rated) and `rate` for the RMSE. Prints them next to the
time-split pipeline's own replay numbers and the largest difference (the check: <= 0.01).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.quality import run_pipeline  # noqa: E402
from components.movielens_example_gen import movielens  # noqa: E402
from pipeline.configs import PipelineConfig  # noqa: E402
from trainer import anchors as A  # noqa: E402
from trainer import metrics as M  # noqa: E402
from trainer import replay as R  # noqa: E402

EVAL_FRACTION = PipelineConfig.__dataclass_fields__["eval_fraction"].default
COLUMNS = ([f"top_{k}_accuracy" for k in M.TOP_KS]
           + [f"{M.FILTERED}top_{k}_accuracy" for k in M.TOP_KS] + ["rmse"])


def read_ratings(data_dir: str, layout: str) -> R.Ratings:
    """Every rating of the layout's ratings file, through the product's reader."""
    rows = [(r.user_id, r.movie_id, r.rating, r.timestamp)
            for r in movielens.iter_ratings(data_dir, layout)]
    user, movie, rating, stamp = zip(*rows)
    return R.Ratings.of(np.array(user), np.array(movie), rating, stamp)


def anchor_rows(train: R.Ratings, catalog: np.ndarray) -> list:
    """(name, a function building the scorer) per anchor, in the table's order."""
    baseline = []

    def fitted_baseline():
        if not baseline:
            baseline.append(A.biases(train, catalog))
        return baseline[0]

    return [
        ("most popular (training counts; RMSE: global mean)",
         lambda: A.most_popular(train, catalog)),
        (f"EASE (λ = {A.EASE_LAMBDA:g}) on the request's history",
         lambda: A.ease(train, catalog)),
        ("global mean + movie biases", lambda: fitted_baseline().scorer(with_user=False)),
        ("+ user bias from the request's history",
         lambda: fitted_baseline().scorer(with_user=True)),
        (f"+ item-kNN on baseline residuals of the history (k = {A.KNN_K}, shrunk Pearson "
         f"n/(n+{A.KNN_SHRINKAGE:g}))", lambda: A.item_knn(train, catalog, fitted_baseline())),
    ]


def movierec_scorer(model_dir: str, data_dir: str, layout: str, catalog: np.ndarray):
    """movierec through its signatures (trainer.evaluation.replay_scorer: score_catalog for
    the ranking, serving_default on the rating's joined tf.Example for the rating), its
    columns mapped onto the benchmark's catalog."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from components.movielens_example_gen.executor import ExampleEncoder
    from serving import versions
    from serving.model import movie_catalog
    from trainer import evaluation, saved_model

    path = versions.resolve(model_dir) if versions.on_disk(model_dir) else model_dir
    model = saved_model.load(path)
    model_ids, _ = movie_catalog(model)
    column_of = R.lookup(np.array(model_ids), catalog)  # model column of each catalog movie
    encoder = ExampleEncoder(movielens.read_movies(data_dir, layout),
                             movielens.read_users(data_dir, layout))

    def examples_of(batch: R.Requests):
        return [encoder.encode(movielens.Rating(str(u), str(m), float(r), int(t)))
                for u, m, r, t in zip(batch.user, batch.movie, batch.rating,
                                      batch.timestamp)]

    through_signatures = evaluation.replay_scorer(model, examples_of)

    def score(batch: R.Requests):
        model_scores, predicted = through_signatures(
            dataclasses.replace(batch, user=batch.user.astype(str)))
        scores = np.where(column_of >= 0, model_scores[:, np.maximum(column_of, 0)], -np.inf)
        return scores, predicted

    return score, path


def run_movierec(data_dir: str, work_dir: str) -> tuple:
    """A cold `movierec run --split time` into work_dir/movierec (benchmarks/quality.py's
    run_pipeline); (the trained model's serving dir, the pipeline's own metrics)."""
    from tfx.utils import path_utils

    metrics = run_pipeline(data_dir, os.path.join(work_dir, "movierec"), "--split", "time")
    metrics.pop("history", None)
    return path_utils.serving_model_path(metrics["model"]), metrics


OUTSIDE_FOLD = "oldest"
OUTSIDE_TOLERANCE = 0.01


def oldest_directory(data_dir: str, layout: str, cutoff: int, work_dir: str) -> str:
    """work_dir/oldest: data_dir's movie and user files and only its ratings before
    `cutoff` (the layout's ratings file and OUTSIDE_FOLD.base hold them all,
    OUTSIDE_FOLD.test the newest day of them), lines copied as they are: the product's
    reader says where each rating's line starts and its time in seconds."""
    files = movielens.layout_files(layout)
    out = pathlib.Path(work_dir) / "oldest"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for key in ("movies", "users"):
        if files[key]:
            shutil.copy(os.path.join(data_dir, files[key]), out / files[key])
    raw = pathlib.Path(data_dir, files["ratings"]).read_bytes()
    rated = list(movielens.iter_ratings(data_dir, layout))
    header = [raw[:rated[0].offset]]  # ml-latest's CSV header; empty for the others

    def line(offset):
        end = raw.find(b"\n", offset)
        return raw[offset:] if end < 0 else raw[offset:end + 1]

    old = [(r.timestamp, line(r.offset)) for r in rated
           if not R.is_held_out(r.timestamp, cutoff)]
    newest = max(stamp for stamp, _ in old)
    for name, lines in ((files["ratings"], old), (f"{OUTSIDE_FOLD}.base", old),
                        (f"{OUTSIDE_FOLD}.test", [o for o in old if o[0] > newest - 86400])):
        (out / name).write_bytes(b"".join(header + [line for _, line in lines]))
    return str(out)


def outside_metrics(model_dir: str, requests: R.Requests, data_dir: str, layout: str,
                    batch_size: int) -> dict:
    """The replay's top-K accuracies and RMSE of requests asked of an exported model from
    outside: `recommend_at` (k = 100) without and with exclude_rated, and `rate`."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf

    from components.movielens_example_gen.executor import user_values
    from trainer import evaluation, saved_model
    from trainer import signatures as S

    model = saved_model.load(model_dir)
    users = movielens.read_users(data_dir, layout)
    ranks = {False: [], True: []}
    predicted = []
    for batch in requests.batches(batch_size):
        n = len(batch)
        people = [user_values(users.get(str(u))) for u in batch.user]
        context = {**evaluation.history_inputs(batch),
                   **{key: np.array([p[key] for p in people]) for key in S.DEMOGRAPHIC_INPUTS}}
        asked = {S.USER_ID: batch.user.astype(str), S.TIMESTAMP: batch.timestamp, **context}
        for exclude in ranks:
            listed = saved_model.call(model, S.RECOMMEND_AT, **asked, **{
                S.K: np.full(n, M.TOP_KS[-1]), S.EXCLUDE_RATED: np.full(n, exclude)})
            ids = listed[S.MOVIE_IDS].numpy().astype(bytes)
            hit = ids == batch.movie.astype(str).astype(bytes)[:, None]
            ranks[exclude].append(np.where(hit.any(axis=1), hit.argmax(axis=1), ids.shape[1]))
        rated = saved_model.call(model, S.RATE, **asked,
                                 **{S.MOVIE_ID: batch.movie.astype(str)})[S.RATING]
        predicted.append(tf.reshape(rated, [-1]).numpy())
    out = {"requests": len(requests)}
    for exclude, prefix in ((False, ""), (True, M.FILTERED)):
        rank = np.concatenate(ranks[exclude])
        out.update({f"{prefix}top_{k}_accuracy": float(np.mean(rank < k)) for k in M.TOP_KS})
    error = np.concatenate(predicted) - requests.rating
    out["rmse"] = float(np.sqrt(np.mean(error ** 2)))
    return out


def outside_check(args, layout: str, cutoff: int, requests: R.Requests,
                  pipeline_metrics: dict) -> dict:
    """Trains on the oldest directory (fold:oldest), asks it from outside, compares."""
    from tfx.utils import path_utils

    oldest = oldest_directory(args.data_dir, layout, cutoff, args.work_dir)
    started = time.time()
    run = run_pipeline(oldest, os.path.join(args.work_dir, "outside"), "--split",
                       f"fold:{OUTSIDE_FOLD}")
    trained_s = time.time() - started
    model_dir = path_utils.serving_model_path(run["model"])
    started = time.time()
    asked = outside_metrics(model_dir, requests, oldest, layout, args.batch_size)
    keys = [k for k in COLUMNS if k in asked]
    differences = {k: asked[k] - pipeline_metrics[k] for k in keys}
    largest = max(abs(d) for d in differences.values())
    result = {"model": model_dir, "train_s": round(trained_s, 1),
              "ask_s": round(time.time() - started, 1), "outside": asked,
              "pipeline": {k: pipeline_metrics[k] for k in keys},
              "differences": differences, "largest_difference": largest,
              "within_tolerance": largest <= OUTSIDE_TOLERANCE}
    lines = ["| metric | pipeline (time split) | outside (oldest only) | difference |",
             "| --- | --- | --- | --- |"]
    lines += [f"| {k} | {pipeline_metrics[k]:.4f} | {asked[k]:.4f} | {differences[k]:+.4f} |"
              for k in keys]
    print("\n".join(lines))
    print(f"largest difference {largest:.4f} (tolerance {OUTSIDE_TOLERANCE}): "
          f"{'within' if result['within_tolerance'] else 'OUTSIDE'}")
    return result


def measure(name: str, build, requests: R.Requests, batch_size: int) -> dict:
    started = time.time()
    metrics = R.evaluate(requests, build(), batch_size)
    row = {"model": name, **metrics, "wall_s": round(time.time() - started, 1)}
    print(f"  {name}: {row['wall_s']} s", file=sys.stderr)
    return row


def table(rows: list) -> str:
    def cell(row, key):
        return f"{row[key]:.4f}" if key in row else "–"

    header = ["model", *(c.replace("_accuracy", "").replace("_", " ") for c in COLUMNS),
              "wall"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join([row["model"], *(cell(row, c) for c in COLUMNS),
                                        f"{row['wall_s']} s"]) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared/data/ml-100k"))
    parser.add_argument("--work-dir", default="/tmp/movierec-replay")
    parser.add_argument("--eval-fraction", type=float, default=EVAL_FRACTION)
    parser.add_argument("--batch-size", type=int, default=R.DEFAULT_BATCH)
    parser.add_argument("--movierec-model", default="",
                        help="a pushed serving dir (OUT/serving/movierec) or a version dir")
    parser.add_argument("--run-movierec", action="store_true",
                        help="run `movierec run --split time` into --work-dir and score it")
    parser.add_argument("--outside", action="store_true",
                        help="with --run-movierec: also train on the oldest ratings only and "
                             "ask that model from outside (recommend_at, rate)")
    args = parser.parse_args(argv)
    if args.outside and not args.run_movierec:
        parser.error("--outside compares with the pipeline's own numbers: add --run-movierec")
    os.makedirs(args.work_dir, exist_ok=True)

    started = time.time()
    layout = movielens.detect_layout(args.data_dir)
    ratings = read_ratings(args.data_dir, layout)
    catalog = np.array(sorted(movielens.read_movies(args.data_dir, layout)))
    cutoff = R.time_cutoff(ratings.timestamp, args.eval_fraction)
    train, held_out = ratings.split(cutoff)
    requests = R.requests(train, held_out, catalog)
    new_users = ~np.isin(requests.user, train.user)
    setup = {"data_dir": args.data_dir, "layout": layout, "ratings": len(ratings),
             "train": len(train), "held_out": len(held_out), "catalog": len(catalog),
             "cutoff": cutoff, "eval_fraction": args.eval_fraction,
             "held_out_from_new_users": float(np.mean(new_users)),
             "requests_without_history": int(np.sum(requests.history_length == 0)),
             "read_s": round(time.time() - started, 1)}
    print(f"replay: {setup}", file=sys.stderr)

    rows = [measure(name, build, requests, args.batch_size)
            for name, build in anchor_rows(train, catalog)]
    pipeline_metrics = None
    model_dir = args.movierec_model
    if args.run_movierec and not model_dir:
        model_dir, pipeline_metrics = run_movierec(args.data_dir, args.work_dir)
        setup["movierec_run_s"] = pipeline_metrics["wall_s"]
    if model_dir:
        scorer, path = movierec_scorer(model_dir, args.data_dir, layout, catalog)
        rows.append(measure("movierec (request history)", lambda: scorer, requests,
                            args.batch_size))
        setup["movierec_model"] = path

    result = {"setup": setup, "rows": rows, "pipeline_metrics": pipeline_metrics}
    print(table(rows))
    if args.outside:
        result["outside_check"] = outside_check(args, layout, cutoff, requests,
                                                pipeline_metrics)
    with open(os.path.join(args.work_dir, "replay.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    from pipeline.errors import exit_now

    outcome = main()  # 1 when the outside check is out of tolerance
    exit_now(0 if outcome.get("outside_check", {}).get("within_tolerance", True) else 1)

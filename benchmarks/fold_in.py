"""The factorization's fold-in settings, chosen by a replay *inside* the training ratings.

    .venv/bin/python benchmarks/fold_in.py [--data-dir ../shared/data/ml-100k] [--outer]

The time split's training ratings (everything before the cutoff `movierec run --split
time` uses) are split again by the same rule: the model's factorization
(trainer/factorization.py's FoldedFactorization, the product's own layer) is fitted on the
older 80% of them, and their newest 20% are replayed through it (trainer/replay.py: each
rating a request that knows its user's earlier ratings, the latest `history_len` of them,
as the towers read). It prints the factorization's RMSE alone (clipped to the rating
range) for each setting of the grid; the row with the lowest is the choice, made without
the eval split. With --outer the same settings are also measured on the real replay (fit
on all training ratings, the eval split replayed): for the record, never for the choice.
The history head is not in these numbers (the blend weight is the model's, fixed).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.replay import EVAL_FRACTION, read_ratings  # noqa: E402
from components.movielens_example_gen import movielens  # noqa: E402
from trainer import features as F  # noqa: E402
from trainer import replay as R  # noqa: E402
from trainer.factorization import FoldedFactorization  # noqa: E402
from trainer.model import HParams  # noqa: E402

# (mf_dim, mf_l2, mf_prior_scale, mf_session_tau, mf_session_l2); the other mf_* settings
# are the defaults'
GRID = [(20, 15.0, 0.0, 0.0, 0.0), (20, 15.0, 0.5, 0.0, 0.0), (20, 15.0, 0.5, 300.0, 20.0),
        (20, 15.0, 0.5, 300.0, 8.0), (20, 15.0, 0.5, 120.0, 20.0), (20, 15.0, 1.0, 300.0, 20.0),
        (20, 15.0, 0.25, 300.0, 20.0), (10, 12.0, 0.5, 300.0, 20.0),
        (12, 12.0, 0.5, 300.0, 20.0)]


def fold_in_rmse(train: R.Ratings, held_out: R.Ratings, setting, hp: HParams,
                 batch_size: int = 2048) -> float:
    """RMSE of the factorization with `setting`, fitted on `train`, on `held_out`
    replayed (each request's latest hp.history_len earlier ratings as its history)."""
    import tensorflow as tf

    dim, l2, prior_scale, tau, session_l2 = setting
    users = np.unique(np.concatenate([train.user, held_out.user]))
    movies = np.unique(np.concatenate([train.movie, held_out.movie]))
    layer = FoldedFactorization(dim, l2, hp.mf_bias_l2, hp.mf_iterations, hp.mf_weight,
                                hp.mf_half_life_days, hp.mf_fold_l2, prior_scale, tau,
                                session_l2, members=hp.mf_members)
    mean = float(np.mean(train.rating))
    layer.fit(R.lookup(users, train.user), R.lookup(movies, train.movie), train.timestamp,
              train.rating, len(users), len(movies), mean)
    requests = R.requests(train, held_out, movies)
    low, high = float(np.min(train.rating)), float(np.max(train.rating))
    errors = []
    for batch in requests.batches(batch_size):
        length = np.minimum(batch.history_length, hp.history_len)
        width = max(int(length.max()), 1)
        ids = np.zeros((len(batch), width), np.int32)
        ratings = np.zeros((len(batch), width), np.float32)
        stamps = np.zeros((len(batch), width), np.int64)
        for i in range(len(batch)):
            at = np.arange(batch.end[i] - length[i], batch.end[i])
            ids[i, :length[i]] = batch.known.column[at] + 1
            ratings[i, :length[i]] = batch.known.rating[at] - mean
            stamps[i, :length[i]] = batch.known.timestamp[at]
        predicted = layer({
            F.USER_ID_XF: tf.constant(R.lookup(users, batch.user)[:, None]),
            F.MOVIE_ID_XF: tf.constant(batch.column[:, None]),
            F.TIMESTAMP_XF: tf.constant(batch.timestamp[:, None]),
            F.HISTORY_IDS_XF: tf.constant(ids), F.HISTORY_RATINGS_XF: tf.constant(ratings),
            F.HISTORY_TIMES_XF: tf.constant(stamps)}).numpy()
        errors.append(np.clip(predicted, low, high) - batch.rating)
    return float(np.sqrt(np.mean(np.concatenate(errors) ** 2)))


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared/data/ml-100k"))
    parser.add_argument("--eval-fraction", type=float, default=EVAL_FRACTION)
    parser.add_argument("--outer", action="store_true",
                        help="also measure each setting on the real replay (not for choosing)")
    args = parser.parse_args(argv)
    ratings = read_ratings(args.data_dir, movielens.detect_layout(args.data_dir))
    train, held_out = ratings.split(R.time_cutoff(ratings.timestamp, args.eval_fraction))
    inner_train, inner_held = train.split(R.time_cutoff(train.timestamp, args.eval_fraction))
    hp = HParams()
    rows = []
    print("| mf_dim | mf_l2 | mf_prior_scale | mf_session_tau | mf_session_l2 | inner RMSE |"
          + (" replay RMSE |" if args.outer else "") + " s |")
    print("| --- " * (7 + args.outer) + "|")
    for setting in GRID:
        started = time.time()
        row = {"setting": setting,
               "inner": fold_in_rmse(inner_train, inner_held, setting, hp)}
        if args.outer:
            row["replay"] = fold_in_rmse(train, held_out, setting, hp)
        row["seconds"] = round(time.time() - started, 1)
        rows.append(row)
        cells = [f"{v:g}" for v in setting] + [f"{row['inner']:.4f}"]
        cells += [f"{row['replay']:.4f}"] if args.outer else []
        print("| " + " | ".join(cells + [f"{row['seconds']}"]) + " |", flush=True)
    best = min(rows, key=lambda r: r["inner"])
    print(f"lowest inner RMSE: {best['setting']} ({best['inner']:.4f})")
    return rows


if __name__ == "__main__":
    main()

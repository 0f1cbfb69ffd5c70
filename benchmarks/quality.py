"""Quality benchmark on MovieLens 100K: baselines, the seeds' recipe and our default,
side by side, from one invocation.

    .venv/bin/python benchmarks/quality.py [--data-dir ../shared/data/ml-100k]
                                           [--work-dir /tmp/movierec-quality] [--folds]

Rows (all on the same seeded random 80/20 split, top-K over the full catalog):
  most popular      the train split's most rated movies for everyone; global-mean RMSE
  seeds (published) the numbers the seeds report (TFRS multitask, 3 epochs)
  seeds' recipe     our pipeline with the seeds' settings: 3 epochs, batch 2048, Adagrad 0.1
                    (constant), loss weights 0.5/0.5, 32-d embeddings, shared rating head, no
                    logQ, no user history (our side features stay in the towers)
  movierec default  `movierec run` with no options
With --folds, also the mean RMSE of the default over ml-100k's five predefined folds u1..u5
(for comparison with published tables). Every pipeline row is a real `movierec run`
(--no-cache), timed end to end. Writes quality.json, comparison.png and curves.png into
--work-dir.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
MOVIEREC = str(pathlib.Path(sys.executable).parent / "movierec")
SEEDS_PUBLISHED = {"top_10_accuracy": 0.0255, "top_100_accuracy": 0.248, "rmse": 1.060}
SEEDS_RECIPE = {"epochs": 3, "batch_size": 2048, "optimizer": "adagrad", "learning_rate": 0.1,
                "retrieval_weight": 0.5, "rating_weight": 0.5, "embedding_dim": 32,
                "rating_tower": "shared", "logq_correction": False,
                "remove_accidental_hits": False, "dropout": 0.0, "lr_schedule": "constant",
                "history_len": 0, "session_tau": 0.0, "history_ratings": False,
                "residual_knn_weight": 0.0, "residual_session_weight": 0.0}
KS = (1, 5, 10, 50, 100)


def run_pipeline(data_dir, output_dir, *extra) -> dict:
    """One cold `movierec run`; its metrics, wall time and training history."""
    started = time.time()
    proc = subprocess.run([MOVIEREC, "run", "--data-dir", data_dir, "--output-dir",
                           output_dir, "--no-cache", *extra], capture_output=True, text=True)
    seconds = time.time() - started
    if proc.returncode != 0:
        raise SystemExit(f"movierec run failed: {proc.stderr.strip()}")
    metrics = json.loads(subprocess.run(
        [MOVIEREC, "inspect", "metrics", "--output-dir", output_dir, "--json"],
        capture_output=True, text=True, check=True).stdout)
    metrics["wall_s"] = round(seconds, 1)
    history = pathlib.Path(metrics["model"]).parent.parent / "model_run" / pathlib.Path(
        metrics["model"]).name / "training.json"
    metrics["history"] = json.loads(history.read_text())["history"] if history.exists() else {}
    return metrics


def popularity_baseline(examples_uri: str) -> dict:
    """Most-rated movies of the train split for everyone; the global mean as the rating."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    from trainer import features as F

    spec = F.raw_feature_spec((F.MOVIE_FEATURES[0], F.LABEL_FEATURE))

    def read(split):
        files = tf.io.gfile.glob(f"{examples_uri}/Split-{split}/*")
        ids, ratings = [], []
        for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(8192):
            parsed = tf.io.parse_example(batch, spec)
            ids.append(parsed[F.MOVIE_ID].numpy().reshape(-1))
            ratings.append(parsed[F.RATING].numpy().reshape(-1))
        return np.concatenate(ids), np.concatenate(ratings)

    started = time.time()
    train_ids, train_ratings = read(F.TRAIN_SPLIT)
    eval_ids, eval_ratings = read(F.EVAL_SPLIT)
    movies, counts = np.unique(train_ids, return_counts=True)
    rank = {m: r for r, m in enumerate(movies[np.argsort(-counts, kind="stable")])}
    ranks = np.array([rank.get(m, len(rank)) for m in eval_ids])
    out = {f"top_{k}_accuracy": float(np.mean(ranks < k)) for k in KS}
    out["rmse"] = float(np.sqrt(np.mean((eval_ratings - train_ratings.mean()) ** 2)))
    out["wall_s"] = round(time.time() - started, 1)
    return out


def plot(rows: dict, work_dir: pathlib.Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, key, title in zip(axes, ("top_10_accuracy", "top_100_accuracy", "rmse"),
                              ("top-10 accuracy (higher is better)",
                               "top-100 accuracy (higher is better)",
                               "RMSE (lower is better)")):
        values = [rows[n].get(key, np.nan) for n in names]
        bars = ax.bar(range(len(names)), values, color=["#999", "#c66", "#d95", "#38a"])
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
        if key == "rmse":
            ax.set_ylim(0.8, max(v for v in values if v == v) * 1.05)
    fig.tight_layout()
    fig.savefig(work_dir / "comparison.png", dpi=110)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, row in rows.items():
        history = row.get("history") or {}
        if "rmse" in history:
            axes[0].plot(range(1, len(history["rmse"]) + 1), history["rmse"], marker="o",
                         label=f"{name} (train)")
        if "val_rmse" in history:
            axes[0].plot(range(1, len(history["val_rmse"]) + 1), history["val_rmse"],
                         marker="x", linestyle="--", label=f"{name} (validation)")
        if "loss" in history:
            axes[1].plot(range(1, len(history["loss"]) + 1),
                         np.array(history["loss"]) / history["loss"][0], marker="o",
                         label=name)
    axes[0].set_title("rating RMSE per epoch")
    axes[1].set_title("total loss per epoch (relative to epoch 1)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(work_dir / "curves.png", dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared/data/ml-100k"))
    parser.add_argument("--work-dir", default="/tmp/movierec-quality")
    parser.add_argument("--folds", action="store_true",
                        help="also the mean RMSE over ml-100k's folds u1..u5 (5 more runs)")
    args = parser.parse_args(argv)
    work = pathlib.Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)

    rows = {}
    default = run_pipeline(args.data_dir, str(work / "default"))
    rows["most popular"] = popularity_baseline(default["examples"])
    rows["seeds (published)"] = dict(SEEDS_PUBLISHED)
    recipe = [f"--hparam={k}={json.dumps(v) if isinstance(v, bool) else v}"
              for k, v in SEEDS_RECIPE.items()]
    rows["seeds' recipe"] = run_pipeline(args.data_dir, str(work / "seeds"),
                                         "--rmse-upper-bound", "10", *recipe)
    rows["movierec default"] = default
    if args.folds:
        folds = [run_pipeline(args.data_dir, str(work / f"fold-u{i}"), "--split", f"fold:u{i}")
                 for i in range(1, 6)]
        rows["movierec default"]["folds_rmse"] = [f["rmse"] for f in folds]
        rows["movierec default"]["folds_mean_rmse"] = float(np.mean([f["rmse"] for f in folds]))

    header = f"{'model':<20}" + "".join(f"{'top' + str(k):>8}" for k in KS) + \
        f"{'rmse':>8}{'wall s':>8}"
    print(header)
    print("-" * len(header))
    for name, row in rows.items():
        cells = "".join(f"{row[f'top_{k}_accuracy']:8.4f}" if f"top_{k}_accuracy" in row
                        else f"{'-':>8}" for k in KS)
        print(f"{name:<20}{cells}{row['rmse']:8.4f}"
              f"{row['wall_s'] if 'wall_s' in row else '-':>8}")
    ours, seed = rows["movierec default"], SEEDS_PUBLISHED
    print(f"\nmovierec default vs seeds (published): top-100 x{ours['top_100_accuracy'] / seed['top_100_accuracy']:.2f}, "
          f"top-10 x{ours['top_10_accuracy'] / seed['top_10_accuracy']:.2f}, "
          f"RMSE {ours['rmse'] - seed['rmse']:+.3f}")
    if "folds_mean_rmse" in ours:
        print("folds u1..u5 RMSE: " + ", ".join(f"{r:.4f}" for r in ours["folds_rmse"])
              + f"; mean {ours['folds_mean_rmse']:.4f}")
    plot(rows, work)
    (work / "quality.json").write_text(json.dumps(rows, indent=1, default=float))
    print(f"\nwrote {work / 'quality.json'}, {work / 'comparison.png'}, {work / 'curves.png'}")


if __name__ == "__main__":
    main()

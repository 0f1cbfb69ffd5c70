"""Ranking and rating metrics on numpy arrays, named once for every protocol.

trainer/evaluation.py (an exported model on the random, fold or time split) and
trainer/replay.py (the replay protocol of issue 13) both compute their numbers here, so a
metric means the same thing, under the same key, whatever the protocol:

- rank of a held-out movie: how many catalog movies score strictly higher (ties count in
  the movie's favour, as TFRS's FactorizedTopK does); a movie outside the catalog is never
  found (rank NOT_FOUND, past any K even for a catalog smaller than K);
- `{prefix}top_{K}_accuracy` = share of ranks < K for K in TOP_KS, `{prefix}mrr` = mean of
  1 / (rank + 1); prefix "" or "filtered_" (movies the request already knows removed
  from the ranking, never the answer itself);
- `rmse`, `mae`, `rating_examples` of predicted minus true ratings.

numpy only: no TensorFlow, so the benchmarks and the replay protocol load fast.
"""

from __future__ import annotations

import numpy as np

# How held-out ratings are measured (the `protocol` of a run's metrics): HELD_OUT ranks
# each one for its user at its time (trainer/evaluation.py); REPLAY replays them in time
# order as requests that know the user's earlier ratings (trainer/replay.py, a time split).
HELD_OUT, REPLAY = "heldout", "replay"
PROTOCOLS = (HELD_OUT, REPLAY)
TOP_KS = (1, 5, 10, 50, 100)
FILTERED = "filtered_"
NOT_FOUND = np.iinfo(np.int64).max // 2  # the rank of a movie outside the catalog


def ranks(scores: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Per row of `scores` [n, catalog], the rank of the movie in `columns` [n] (-1: not in
    the catalog, rank NOT_FOUND)."""
    columns = np.asarray(columns)
    truth = scores[np.arange(len(columns)), np.maximum(columns, 0)]
    found = (scores > truth[:, None]).sum(axis=1)
    return np.where(columns >= 0, found, NOT_FOUND)


def without_seen(scores: np.ndarray, rows: np.ndarray, columns: np.ndarray,
                 keep_columns: np.ndarray | None = None) -> np.ndarray:
    """A copy of `scores` with the (row, column) pairs a request already knows set to -inf,
    except each row's `keep_columns` entry (the answer itself is never hidden)."""
    scores = np.array(scores, copy=True)
    rows, columns = np.asarray(rows, dtype=np.int64), np.asarray(columns, dtype=np.int64)
    valid = columns >= 0
    rows, columns = rows[valid], columns[valid]
    if keep_columns is not None:
        keep = np.asarray(keep_columns)[rows]
        rows, columns = rows[columns != keep], columns[columns != keep]
    scores[rows, columns] = -np.inf
    return scores


def top_k_metrics(rank_arrays, prefix: str = "") -> dict:
    """top_K_accuracy for K in TOP_KS and mrr of ranks (one array, or a list of them)."""
    ranks_ = (np.concatenate(rank_arrays) if isinstance(rank_arrays, (list, tuple))
              else np.asarray(rank_arrays))
    if not len(ranks_):
        return {}
    out = {f"{prefix}top_{k}_accuracy": float(np.mean(ranks_ < k)) for k in TOP_KS}
    out[f"{prefix}mrr"] = float(np.mean(1.0 / (ranks_ + 1)))
    return out


def rating_metrics(errors) -> dict:
    """rmse, mae and rating_examples of predicted minus true ratings (an array or a list)."""
    errors = (np.concatenate(errors) if isinstance(errors, (list, tuple)) and len(errors)
              else np.asarray(errors, dtype=np.float64).reshape(-1))
    if not len(errors):
        return {"rating_examples": 0}
    return {"rmse": float(np.sqrt(np.mean(errors ** 2))),
            "mae": float(np.mean(np.abs(errors))), "rating_examples": int(len(errors))}

"""The replay protocol (issue 13): what a deployed model faces between two retrains.

Train on the oldest ratings (one global time cutoff: `time_cutoff`, the one `movierec run
--split time` splits by); then replay the held-out newest ratings in time order. Each
held-out rating (u, m, r, t) is a *request* at time t that knows every rating u made
strictly before t, in training or earlier in the replay (equal timestamps count as "not
before"). A scorer answers a batch of requests with a score per catalog movie and/or a
predicted rating; `evaluate` turns its answers into trainer/metrics.py's metrics over the
full catalog: `top_K_accuracy` (rank of m), `filtered_top_K_accuracy` (the request's
history removed from the ranking, never m itself), `mrr`, `filtered_mrr`, and `rmse`,
`mae`.

Everything is vectorised numpy: a request's history is a slice of one array of all
ratings sorted by (user, time), so requests cost O(ratings) memory however long the
histories are. numpy and trainer/ only: the pipeline's evaluators, `movierec evaluate` and
benchmarks/replay.py call it with their own scorers.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Optional, Tuple

import numpy as np

from trainer import metrics as M

DEFAULT_BATCH = 1024
PROTOCOL = M.REPLAY  # the `protocol` of the metrics `evaluate` returns


# --- the split ------------------------------------------------------------------------------
def time_cutoff(timestamps, eval_fraction: float) -> int:
    """The timestamp from which the newest `eval_fraction` of ratings start: the rating at
    position int(n * (1 - eval_fraction)) in time order. Ratings at the cutoff or later are
    held out (`is_held_out`); ties at the cutoff all go to the held-out side."""
    stamps = np.asarray(timestamps, dtype=np.int64).reshape(-1)
    if not len(stamps):
        raise ValueError("no ratings to split")
    position = min(len(stamps) - 1, int(len(stamps) * (1.0 - eval_fraction)))
    return int(np.partition(stamps, position)[position])


def is_held_out(timestamp, cutoff: int):
    """Whether a rating at `timestamp` (a number or an array) is on the held-out side."""
    return timestamp >= cutoff


@dataclasses.dataclass(frozen=True)
class Ratings:
    """Ratings as parallel arrays: raw user and movie ids (any dtype), rating, timestamp."""

    user: np.ndarray
    movie: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray

    @classmethod
    def of(cls, user, movie, rating, timestamp) -> "Ratings":
        return cls(np.asarray(user), np.asarray(movie),
                   np.asarray(rating, dtype=np.float64).reshape(-1),
                   np.asarray(timestamp, dtype=np.int64).reshape(-1))

    def __len__(self) -> int:
        return len(self.rating)

    def take(self, index) -> "Ratings":
        return Ratings(self.user[index], self.movie[index], self.rating[index],
                       self.timestamp[index])

    def split(self, cutoff: int) -> Tuple["Ratings", "Ratings"]:
        """(train, held out) by the time cutoff."""
        held = is_held_out(self.timestamp, cutoff)
        return self.take(~held), self.take(held)


def lookup(vocabulary: np.ndarray, ids) -> np.ndarray:
    """Position of each id in `vocabulary` (any order, unique ids), -1 where absent."""
    vocabulary, ids = np.asarray(vocabulary), np.asarray(ids)
    if not len(vocabulary):
        return np.full(len(ids), -1, dtype=np.int64)
    order = np.argsort(vocabulary, kind="stable")
    ordered = vocabulary[order]
    at = np.minimum(np.searchsorted(ordered, ids), len(ordered) - 1)
    return np.where(ordered[at] == ids, order[at], -1).astype(np.int64)


# --- requests -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Known:
    """Every rating (train and held out), sorted by (user, timestamp): the store the
    requests' histories are slices of. `column` is the movie's catalog column (-1: not
    in the catalog)."""

    user: np.ndarray
    movie: np.ndarray
    column: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray


@dataclasses.dataclass(frozen=True)
class Requests:
    """Held-out ratings as requests, in time order (ties in their input order).

    Per request: raw user and movie ids, the movie's catalog column (-1: not in the
    catalog), the true rating, the time, its history `known[start:end]` (the user's
    ratings strictly before the time) and `source`, its position in the held-out ratings
    it came from. `catalog` holds the movie ids of the columns."""

    catalog: np.ndarray
    source: np.ndarray
    user: np.ndarray
    movie: np.ndarray
    column: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray
    start: np.ndarray
    end: np.ndarray
    known: Known

    def __len__(self) -> int:
        return len(self.rating)

    @property
    def history_length(self) -> np.ndarray:
        return self.end - self.start

    def history(self, i: int) -> Ratings:
        """Request i's history, oldest first."""
        s = slice(int(self.start[i]), int(self.end[i]))
        k = self.known
        return Ratings(k.user[s], k.movie[s], k.rating[s], k.timestamp[s])

    def take(self, index) -> "Requests":
        return dataclasses.replace(
            self, source=self.source[index], user=self.user[index], movie=self.movie[index], column=self.column[index],
            rating=self.rating[index], timestamp=self.timestamp[index],
            start=self.start[index], end=self.end[index])

    def batches(self, size: int = DEFAULT_BATCH) -> Iterator["Requests"]:
        for begin in range(0, len(self), size):
            yield self.take(slice(begin, begin + size))

    def history_entries(self) -> Tuple[np.ndarray, np.ndarray]:
        """(request row, index into `known`) of every history entry, rows ascending and
        each row's entries oldest first."""
        lengths = self.history_length
        rows = np.repeat(np.arange(len(self)), lengths)
        first = np.repeat(self.start - np.cumsum(lengths) + lengths, lengths)
        return rows, first + np.arange(int(lengths.sum()))

    def history_matrix(self, values: Optional[np.ndarray] = None,
                       dtype=np.float32) -> np.ndarray:
        """[requests, catalog]: `values` (one per `known` rating; default 1) at each
        history movie's column, 0 elsewhere (movies outside the catalog left out)."""
        rows, at = self.history_entries()
        out = np.zeros([len(self), len(self.catalog)], dtype=dtype)
        columns = self.known.column[at]
        keep = columns >= 0
        out[rows[keep], columns[keep]] = 1 if values is None else values[at][keep]
        return out


def requests(train: Ratings, held_out: Ratings, catalog=None) -> Requests:
    """The replay requests of `held_out`, each knowing its user's earlier ratings in
    `train` and `held_out`. `catalog`: the movie ids of the ranking's columns (default:
    every movie rated in either)."""
    catalog = (np.unique(np.concatenate([train.movie, held_out.movie])) if catalog is None
               else np.asarray(catalog))
    user = np.concatenate([train.user, held_out.user])
    movie = np.concatenate([train.movie, held_out.movie])
    stamp = np.concatenate([train.timestamp, held_out.timestamp])
    rating = np.concatenate([train.rating, held_out.rating])
    users, user_code = np.unique(user, return_inverse=True)
    stamps, stamp_code = np.unique(stamp, return_inverse=True)
    key = user_code.astype(np.int64) * (len(stamps) + 1) + stamp_code
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    known = Known(user[order], movie[order], lookup(catalog, movie[order]), rating[order],
                  stamp[order])

    held = np.arange(len(train), len(user))
    time_order = held[np.argsort(stamp[held], kind="stable")]
    first_of_user = user_code[time_order].astype(np.int64) * (len(stamps) + 1)
    start = np.searchsorted(sorted_key, first_of_user, side="left")
    end = np.searchsorted(sorted_key, key[time_order], side="left")
    return Requests(catalog, time_order - len(train), user[time_order], movie[time_order],
                    lookup(catalog, movie[time_order]), rating[time_order], stamp[time_order],
                    start, end, known)


# --- scoring --------------------------------------------------------------------------------
#: A scorer answers a batch of requests with (scores [batch, catalog] or None, predicted
#: ratings [batch] or None); None: the model does not do that task.
Scorer = Callable[[Requests], Tuple[Optional[np.ndarray], Optional[np.ndarray]]]


def filtered_scores(batch: Requests, scores: np.ndarray) -> np.ndarray:
    """`scores` with each request's history movies set to -inf (never its answer)."""
    rows, at = batch.history_entries()
    return M.without_seen(scores, rows, batch.known.column[at], batch.column)


def sample(requests_: Requests, size: int, seed: int = 0) -> Requests:
    """A seeded sample of `size` requests (all of them when there are no more), in time
    order; their histories stay whole."""
    if size <= 0 or len(requests_) <= size:
        return requests_
    keep = np.random.default_rng(seed).choice(len(requests_), size, replace=False)
    return requests_.take(np.sort(keep))


def evaluate(requests_: Requests, scorer: Scorer, batch_size: int = DEFAULT_BATCH) -> dict:
    """The replay metrics of `scorer` on `requests_`: top_K_accuracy, mrr and their
    filtered_ versions where it scores the catalog; rmse, mae where it predicts ratings;
    plus `requests`, `retrieval_examples`, `rating_examples`."""
    ranks, filtered, errors = [], [], []
    for batch in requests_.batches(batch_size):
        scores, predicted = scorer(batch)
        if scores is not None:
            scores = np.asarray(scores)
            ranks.append(M.ranks(scores, batch.column))
            filtered.append(M.ranks(filtered_scores(batch, scores), batch.column))
        if predicted is not None:
            errors.append(np.asarray(predicted, dtype=np.float64).reshape(-1) - batch.rating)
    out = {"protocol": PROTOCOL, "requests": len(requests_)}
    if ranks:
        out.update(M.top_k_metrics(ranks))
        out.update(M.top_k_metrics(filtered, M.FILTERED))
        out["retrieval_examples"] = int(sum(len(r) for r in ranks))
    if errors:
        out.update(M.rating_metrics(errors))
    return out

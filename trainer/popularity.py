"""What is popular near a time: the answer to a request that names no user the model knows,
no history and no demographics (issue 13), instead of one all-time most-popular list.

The training ratings' times are cut into `buckets` buckets of equal numbers of ratings. A
movie's popularity at time t is its number of training ratings in the `window` buckets
that end with t's bucket (t after the training data: the newest ones), about window /
buckets of the training ratings (2% by default), ties broken by its all-time count. On
ML-100K's replay (train on the oldest 80%), a new user's first rating is in the top 10 of
the newest 2% of the training ratings' counts 48% of the time, in the top 10 of the
all-time counts 17% (docs/benchmarks.md).

    edges, table = time_buckets(movies, times, num_movies)   # numpy, at export
    TimePopularity(edges, table)(timestamps)                 # [batch, num_movies] in TF
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

BUCKETS = 50
WINDOW = 1


def time_buckets(movies, times, num_movies: int, buckets: int = BUCKETS,
                 window: int = WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """(edges [buckets - 1] int64, table [buckets, num_movies] float32) of ratings (a movie
    index in 0..num_movies-1 and a time each): bucket b holds the times from edges[b - 1]
    (the first bucket: all earlier) to before edges[b]; table[b] is each movie's count of
    ratings in buckets b - window + 1 .. b, plus its all-time count / (all ratings + 1), a
    tie-break below one rating."""
    movies = np.asarray(movies, dtype=np.int64)
    times = np.asarray(times, dtype=np.int64)
    if not len(times):
        return np.zeros([0], np.int64), np.zeros([1, num_movies], np.float32)
    order = np.sort(times)
    edges = order[(np.arange(1, buckets) * len(order)) // buckets]
    bucket = np.searchsorted(edges, times, side="right")
    counts = np.zeros([buckets, num_movies])
    np.add.at(counts, (bucket, movies), 1.0)
    cumulative = np.concatenate([np.zeros([1, num_movies]), np.cumsum(counts, axis=0)])
    start = np.maximum(np.arange(buckets) + 1 - max(window, 1), 0)
    windowed = cumulative[1:] - cumulative[start]
    total = counts.sum(axis=0)
    return edges.astype(np.int64), (windowed + total / (len(times) + 1.0)).astype(np.float32)


class TimePopularity(tf.Module):
    """time_buckets' table in TF: each timestamp's row ([batch] int64 -> [batch, movies])."""

    def __init__(self, edges: np.ndarray, table: np.ndarray, name: str = "time_popularity"):
        super().__init__(name=name)
        self._edges = tf.constant(np.asarray(edges, np.int64).reshape(1, -1))
        self._table = tf.constant(np.asarray(table, np.float32))

    def __call__(self, timestamps):
        at = tf.searchsorted(self._edges, tf.reshape(timestamps, [1, -1]), side="right")
        return tf.gather(self._table, at[0])

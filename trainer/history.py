"""Histories stored at training: each user's most recent training ratings (or each movie's
most recent raters), as tables the model keeps, and the layer that reads them.

A history is a dict of [batch, L] tensors (the keys below), newest first, 0-padded:
    IDS      int32, the rated movie's movie_id_xf + 1 (a rater's user_id_xf + 1); 0 = none
    RATINGS  float32, the rating minus the training ratings' mean
    TIMES    float32, when (timestamp_s_xf)
The pooling layers (trainer/pooling.py) read these tensors, wherever they come from.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

IDS = "ids"
RATINGS = "ratings"
TIMES = "times"


def user_history(users, movies, times, ratings, num_users: int, length: int):
    """Three [num_users, length] tables, newest first: each user's `length` most recent
    movies (movie_id_xf + 1, 0-padded), their times (timestamp_s) and their ratings minus
    the mean rating. With users and movies swapped: each movie's most recent raters."""
    table = np.zeros((num_users, max(length, 1)), dtype=np.int32)
    when = np.zeros((num_users, max(length, 1)), dtype=np.float32)
    centred = np.zeros((num_users, max(length, 1)), dtype=np.float32)
    if length <= 0 or len(users) == 0:
        return table, when, centred
    ratings = np.asarray(ratings, dtype=np.float32)
    order = np.lexsort((-np.asarray(times), users))
    users, movies = np.asarray(users)[order], np.asarray(movies)[order]
    times, ratings = np.asarray(times)[order], (ratings - ratings.mean())[order]
    starts = np.searchsorted(users, users, side="left")
    rank = np.arange(len(users)) - starts
    keep = rank < length
    table[users[keep], rank[keep]] = movies[keep] + 1
    when[users[keep], rank[keep]] = times[keep]
    centred[users[keep], rank[keep]] = ratings[keep]
    return table, when, centred


class StoredHistory(tf.keras.layers.Layer):
    """Row lookup in stored history tables: keys [batch] (user_id_xf, or movie_id_xf for
    raters) -> {IDS, RATINGS[, TIMES]: [batch, L]}. Not trainable; the tables are the
    ones user_history() builds (times=None: no TIMES table)."""

    def __init__(self, ids, ratings, times=None, **kwargs):
        super().__init__(trainable=False, **kwargs)
        prefix = self.name

        def table(value, dtype, field):
            return tf.Variable(value, trainable=False, dtype=dtype, name=f"{prefix}_{field}")

        self.tables = {IDS: table(ids, tf.int32, IDS), RATINGS: table(ratings, tf.float32, RATINGS)}
        if times is not None:
            self.tables[TIMES] = table(times, tf.float32, TIMES)

    @property
    def length(self) -> int:
        return int(self.tables[IDS].shape[1])

    def call(self, keys, fields=None):
        """The rows of `keys` ([batch] int) of each table in `fields` (default: all)."""
        return {field: tf.gather(self.tables[field], keys) for field in (fields or self.tables)}

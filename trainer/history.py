"""A user's history: the ratings they made before a time, as the towers read it.

A history is three [batch, L] tensors, newest first, 0-padded (trainer/features.py's
HISTORY_XF keys):
    HISTORY_IDS_XF      int32, the rated movie's movie_id_xf + 1; 0 = none
    HISTORY_RATINGS_XF  float32, the rating minus the training ratings' mean
    HISTORY_TIMES_XF    int64, when (the raw timestamp, seconds since the epoch)

It is built the same way wherever it comes from, always from ratings strictly before the
example's (the request's) time:
- training: `CausalHistory`, per batch, from all training ratings sorted by (user, time):
  an example at time t sees its user's `length` latest ratings before t, never a later one
  (nor one at t itself);
- serving: `HistoryMerge`, from the history the model stored at training (`user_history`
  tables, read by `StoredHistory`, kept where they are before the request's time) and the
  one the request brings (which wins for a movie in both).
The pooling layers (trainer/pooling.py) read these tensors. Movies' raters (users and
movies swapped) are stored the same way (`user_history`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from trainer import features as F

IDS = "ids"
RATINGS = "ratings"
TIMES = "times"
# the towers' keys of each field
XF = {IDS: F.HISTORY_IDS_XF, RATINGS: F.HISTORY_RATINGS_XF, TIMES: F.HISTORY_TIMES_XF}
_NEVER = np.iinfo(np.int64).min  # the time of a padding entry


def user_history(users, movies, times, ratings, num_users: int, length: int, mean=None):
    """Three [num_users, length] tables, newest first: each user's `length` most recent
    movies (movie_id_xf + 1, 0-padded), their times (int64) and their ratings minus
    `mean` (default: the ratings' mean). With users and movies swapped: each movie's most
    recent raters."""
    table = np.zeros((num_users, max(length, 1)), dtype=np.int32)
    when = np.zeros((num_users, max(length, 1)), dtype=np.int64)
    centred = np.zeros((num_users, max(length, 1)), dtype=np.float32)
    if length <= 0 or len(users) == 0:
        return table, when, centred
    ratings = np.asarray(ratings, dtype=np.float32)
    mean = float(ratings.mean()) if mean is None else float(mean)
    order = np.lexsort((-np.asarray(times), users))
    users, movies = np.asarray(users)[order], np.asarray(movies)[order]
    times, ratings = np.asarray(times)[order], (ratings - mean)[order]
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
            self.tables[TIMES] = table(times, tf.int64, TIMES)

    @property
    def length(self) -> int:
        return int(self.tables[IDS].shape[1])

    def call(self, keys, fields=None):
        """The rows of `keys` ([batch] int) of each table in `fields` (default: all)."""
        return {field: tf.gather(self.tables[field], keys) for field in (fields or self.tables)}


class CausalHistory:
    """Training examples' histories: every training rating sorted by (user, time), and the
    slice of a user's ratings strictly before a time (`slices`). `batch(start, end)`
    builds the [batch, length] history tensors of examples from their slices (in a
    tf.data map), so a feature of an example never depends on a later rating."""

    def __init__(self, users, movies, times, ratings, length: int, mean: float):
        users = np.asarray(users, dtype=np.int64)
        times = np.asarray(times, dtype=np.int64)
        order = np.lexsort((times, users))
        self._users, self._times_np = users[order], times[order]
        self.length = max(int(length), 1)
        self._movies = tf.constant(np.asarray(movies, dtype=np.int32)[order] + 1)
        self._ratings = tf.constant(
            (np.asarray(ratings, dtype=np.float32) - np.float32(mean))[order])
        self._times = tf.constant(self._times_np)

    def slices(self, users, times) -> tuple[np.ndarray, np.ndarray]:
        """Per (user, time): [start, end) of the user's stored ratings strictly before the
        time (ratings at the time itself are "not before")."""
        users = np.asarray(users, dtype=np.int64)
        times = np.asarray(times, dtype=np.int64)
        start = np.searchsorted(self._users, users, side="left")
        if not len(self._users):
            return start, start
        # one sorted key per stored rating: user, then time (offset, clipped to the span)
        low = int(self._times_np.min())
        span = int(self._times_np.max()) - low + 2
        stored = self._users * span + (self._times_np - low)
        asked = users * span + np.clip(times - low, 0, span - 1)
        return start, np.searchsorted(stored, asked, side="left")

    def batch(self, start, end) -> dict:
        """{HISTORY_*_XF: [batch, length]} of examples with these slices ([batch] each)."""
        start = tf.cast(start, tf.int64)[:, None]
        end = tf.cast(end, tf.int64)[:, None]
        position = end - 1 - tf.range(self.length, dtype=tf.int64)[None, :]
        valid = position >= start
        at = tf.maximum(position, 0)
        return {
            F.HISTORY_IDS_XF: tf.where(valid, tf.gather(self._movies, at), 0),
            F.HISTORY_RATINGS_XF: tf.where(valid, tf.gather(self._ratings, at), 0.0),
            F.HISTORY_TIMES_XF: tf.where(valid, tf.gather(self._times, at),
                                         tf.zeros_like(at)),
        }


class HistoryMerge(tf.keras.layers.Layer):
    """The history a request is answered with: the union of the stored one (its entries
    before the request's time) and the request's own (entries with id 0 are padding), the
    request's entry winning for a movie in both; newest first, the `length` latest kept.
    Inputs and output are {HISTORY_*_XF: [batch, L]} dicts (any L for the request)."""

    def __init__(self, length: int, **kwargs):
        super().__init__(trainable=False, **kwargs)
        self.length = int(length)

    def call(self, stored, now, request=None):
        """stored: the stored rows of the request's users; now: [batch] int64."""
        now = tf.reshape(tf.cast(now, tf.int64), [-1, 1])
        ids = stored[F.HISTORY_IDS_XF]
        keep = tf.not_equal(ids, 0) & (stored[F.HISTORY_TIMES_XF] < now)
        parts = {key: [stored[key]] for key in F.HISTORY_XF}
        keeps = [keep]
        if request is not None:
            asked = request[F.HISTORY_IDS_XF]
            # a stored movie that the request also names: the request's entry counts
            # (looked up in the request's ids sorted, a 0 in front so that no row is
            # empty: O(L log L') per row, not the [L, L'] comparison of every pair)
            pad = tf.zeros_like(ids[:, :1])
            sorted_asked = tf.sort(tf.concat([pad, tf.cast(asked, ids.dtype)], axis=1),
                                   axis=1)
            at = tf.searchsorted(sorted_asked, ids, side="left")
            at = tf.minimum(at, tf.shape(sorted_asked, out_type=at.dtype)[1] - 1)
            named = (tf.equal(tf.gather(sorted_asked, at, batch_dims=1), ids)
                     & tf.not_equal(ids, 0))
            keeps = [keep & ~named, tf.not_equal(asked, 0)]
            for key in F.HISTORY_XF:
                parts[key].append(tf.cast(request[key], stored[key].dtype))
        joined = {key: tf.concat(parts[key], axis=1) for key in F.HISTORY_XF}
        kept = tf.concat(keeps, axis=1)
        times = tf.where(kept, joined[F.HISTORY_TIMES_XF], _NEVER)
        width = tf.shape(times)[1]
        take = tf.minimum(width, self.length)
        order = tf.argsort(times, axis=1, direction="DESCENDING", stable=True)[:, :take]
        kept = tf.gather(kept, order, batch_dims=1)
        out = {}
        for key in F.HISTORY_XF:
            value = tf.gather(joined[key], order, batch_dims=1)
            out[key] = tf.where(kept, value, tf.zeros_like(value))
        return out


def rows_mask(rows, width):
    """[batch, width] bool: True at each row's listed columns (`rows` [batch, L] int64,
    -1: none), e.g. the catalog columns of a history."""
    batch = tf.shape(rows, out_type=tf.int64)[0]
    index = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(rows, out_type=tf.int64))
    valid = rows >= 0
    at = tf.stack([tf.boolean_mask(index, valid), tf.boolean_mask(rows, valid)], axis=1)
    hits = tf.scatter_nd(at, tf.ones(tf.shape(at)[:1]),
                         tf.stack([batch, tf.cast(width, tf.int64)]))
    return hits > 0

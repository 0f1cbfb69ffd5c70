"""Poolings of a list of ids into one vector: the history parts of the towers.

Each layer owns the embedding table it pools (given to it, tagged where it is created:
trainer/embedding.py) and takes the list as plain tensors, [batch, L] each:

    ids    the ids to embed (a history's movie_id_xf + 1, 0 = padding; title tokens),
           a history newest first
    keep   bool, the positions that count (padding and left-out entries are False)
    ratings, times   per position: the centred rating, the time in seconds

so the same layer pools a history read from a stored table (trainer/history.py) or one
that a request brings. A row with no position kept pools to zeros.
"""

from __future__ import annotations

import tensorflow as tf


class MeanPooling(tf.keras.layers.Layer):
    """The mean of embedding(ids) over the kept positions (SVD++'s implicit feedback; the
    tokens of a title): [batch, dim]."""

    def __init__(self, embedding: tf.keras.layers.Layer, **kwargs):
        super().__init__(**kwargs)
        self.embedding = embedding

    def call(self, ids, keep):
        mask = tf.cast(keep, tf.float32)[..., None]
        return (tf.reduce_sum(self.embedding(ids) * mask, axis=1)
                / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0))


class RatingWeightedPooling(tf.keras.layers.Layer):
    """The sum of embedding(ids) weighted by the centred ratings over the kept positions,
    divided by the square root of their count (SVD++'s normalisation): what the user
    thought of the movies (likes and dislikes), or what a movie's raters thought of it."""

    def __init__(self, embedding: tf.keras.layers.Layer, **kwargs):
        super().__init__(**kwargs)
        self.embedding = embedding

    def call(self, ids, ratings, keep):
        mask = tf.cast(keep, tf.float32)
        count = tf.reduce_sum(mask, axis=1, keepdims=True)
        return (tf.reduce_sum(self.embedding(ids) * (ratings * mask)[..., None], axis=1)
                / tf.sqrt(tf.maximum(count, 1.0)))


class SessionPooling(tf.keras.layers.Layer):
    """The mean of embedding(ids) weighted by closeness in time to `now`,
    exp(-|times - now| / tau), over the kept positions: the movies of the same session.
    The weights' sum gets 1e-3 added, so a history far from `now` pools to almost zero."""

    def __init__(self, embedding: tf.keras.layers.Layer, tau: float, **kwargs):
        super().__init__(**kwargs)
        if tau <= 0:
            raise ValueError("SessionPooling needs a time scale tau > 0 (seconds)")
        self.embedding = embedding
        self.tau = float(tau)

    def call(self, ids, times, now, keep):
        """now: [batch] seconds, on the same clock as `times` (the gap is taken in int64,
        exact for epoch seconds)."""
        now = tf.reshape(tf.cast(now, tf.int64), [-1, 1])
        gap = tf.abs(tf.cast(tf.cast(times, tf.int64) - now, tf.float32))
        weight = tf.exp(-gap / self.tau) * tf.cast(keep, tf.float32)
        return (tf.reduce_sum(self.embedding(ids) * weight[..., None], axis=1)
                / (tf.reduce_sum(weight, axis=1, keepdims=True) + 1e-3))


class RecencyPooling(tf.keras.layers.Layer):
    """The mean of embedding(ids) weighted by recency in the list, exp(-position / tau)
    (position 0: the newest entry), over the kept positions: what the user rated last,
    whatever the clock says (the next movie a user rates follows the last few closely).
    The weights' sum gets 1e-3 added."""

    def __init__(self, embedding: tf.keras.layers.Layer, tau: float, **kwargs):
        super().__init__(**kwargs)
        if tau <= 0:
            raise ValueError("RecencyPooling needs a scale tau > 0 (positions)")
        self.embedding = embedding
        self.tau = float(tau)

    def call(self, ids, keep):
        position = tf.cast(tf.range(tf.shape(ids)[1]), tf.float32)[None, :]
        weight = tf.exp(-position / self.tau) * tf.cast(keep, tf.float32)
        return (tf.reduce_sum(self.embedding(ids) * weight[..., None], axis=1)
                / (tf.reduce_sum(weight, axis=1, keepdims=True) + 1e-3))

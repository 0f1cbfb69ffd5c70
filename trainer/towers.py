"""The towers: small layers composed, one concept each.

    Tower = FeatureEmbedding (the example's own features)
          + context blocks (each a list of [batch, d] parts):
              UserHistoryPooling   the user's history: mean, rating-weighted, by recency,
                                   session, count and mean rating
              RaterPooling         the movie's raters: mean, rating-weighted
          -> concatenation -> projection (an MLP)

query_tower() and candidate_tower() compose them from the hyperparameters. The user's
history block reads the history that comes with the input (F.HISTORY_XF, built before
the example's time: trainer/history.py) and hands it to the pooling layers
(trainer/pooling.py); the raters block reads a StoredHistory of the movie's raters.

Layers are built (their weights initialized) in the order they are first called: the
features in key order, then the blocks, then the projection.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from trainer import features as F
from trainer import history as H
from trainer.embedding import TaggedEmbedding
from trainer.pooling import (MeanPooling, RatingWeightedPooling, RecencyPooling,
                             SessionPooling)


def regularizer(hp):
    return tf.keras.regularizers.l2(hp.l2) if hp.l2 else None


def mlp(layers: Sequence[int], out_dim: int | None, hp, name: str):
    """ReLU layers of the given widths (each followed by dropout when hp.dropout), then a
    linear layer of out_dim (none when out_dim is None)."""
    stack = []
    for width in layers:
        stack.append(tf.keras.layers.Dense(width, activation="relu",
                                           kernel_regularizer=regularizer(hp)))
        if hp.dropout:
            stack.append(tf.keras.layers.Dropout(hp.dropout))
    if out_dim is not None:
        stack.append(tf.keras.layers.Dense(out_dim, kernel_regularizer=regularizer(hp)))
    return tf.keras.Sequential(stack, name=name)


def _flat(x):
    return tf.reshape(x, [-1])


class FeatureEmbedding(tf.keras.layers.Layer):
    """The example's own features, one [batch, d] part each in the order of `keys`: ids
    embedded, 0-padded token lists (title tokens, genres) mean-pooled, the normalized
    timestamp as it is. Tables of vocabulary features are tagged with their feature."""

    def __init__(self, keys, vocab, hp, main_keys, **kwargs):
        super().__init__(**kwargs)
        self.keys = tuple(keys)
        self.encoders = {}
        for key in self.keys:
            if key == F.TIMESTAMP_Z_XF:
                continue
            dim = hp.embedding_dim if key in main_keys else hp.side_embedding_dim
            options = dict(mask_zero=key in F.PADDED, embeddings_regularizer=regularizer(hp),
                           name=f"{key}_embedding")
            if key in F.VOCABS:
                table = TaggedEmbedding(vocab.sizes[key], dim, tag=key,
                                        reserved=1 if key in F.PADDED else 0, **options)
            else:  # buckets: the same rows in every run
                table = tf.keras.layers.Embedding(vocab.sizes[key], dim, **options)
            self.encoders[key] = MeanPooling(table, name=f"{key}_mean") \
                if key in F.PADDED else table

    def call(self, inputs):
        parts = []
        for key in self.keys:
            x = inputs[key]
            if key == F.TIMESTAMP_Z_XF:
                parts.append(tf.reshape(tf.cast(x, tf.float32), [-1, 1]))
            elif key in F.PADDED:
                parts.append(self.encoders[key](x, keep=tf.not_equal(x, 0)))
            else:
                parts.append(self.encoders[key](_flat(x)))
        return parts


class UserHistoryPooling(tf.keras.layers.Layer):
    """The query side's history parts, from the input's history (F.HISTORY_XF: the user's
    ratings before the example's time, trainer/history.py), the example's own movie left
    out of it: pooled by `mean`, `rated` (rating-weighted, optional), `recent` (by
    position, newest first; any number) and `session` (optional; only when the input has
    a time), plus two statistics: log(1 + count) and the mean centred rating shrunk
    towards 0 (sum / (count + 5)). An input without a history pools as an empty one."""

    def __init__(self, mean: MeanPooling, rated: RatingWeightedPooling | None = None,
                 recent: Sequence[RecencyPooling] = (),
                 session: SessionPooling | None = None, **kwargs):
        super().__init__(**kwargs)
        self.mean, self.rated, self.session = mean, rated, session
        self.recent = list(recent)

    def call(self, inputs):
        if F.HISTORY_IDS_XF in inputs:
            ids = tf.cast(inputs[F.HISTORY_IDS_XF], tf.int32)
            ratings = tf.cast(inputs[F.HISTORY_RATINGS_XF], tf.float32)
            times = inputs[F.HISTORY_TIMES_XF]
        else:
            batch = tf.shape(tf.reshape(inputs[F.USER_ID_XF], [-1]))[0]
            ids = tf.zeros([batch, 1], tf.int32)
            ratings, times = tf.zeros([batch, 1]), tf.zeros([batch, 1], tf.int64)
        keep = tf.not_equal(ids, 0)
        if F.MOVIE_ID_XF in inputs:
            target = tf.cast(tf.reshape(inputs[F.MOVIE_ID_XF], [-1, 1]), tf.int32) + 1
            keep &= tf.not_equal(ids, target)
        parts = [self.mean(ids, keep=keep)]
        if self.rated is not None:
            parts.append(self.rated(ids, ratings=ratings, keep=keep))
        parts += [pooling(ids, keep=keep) for pooling in self.recent]
        if self.session is not None and F.TIMESTAMP_XF in inputs:
            parts.append(self.session(ids, times=times, now=inputs[F.TIMESTAMP_XF],
                                      keep=keep))
        count = tf.reduce_sum(tf.cast(keep, tf.float32), axis=1, keepdims=True)
        centred = tf.reduce_sum(tf.where(keep, ratings, 0.0), axis=1, keepdims=True)
        parts.append(tf.concat([tf.math.log1p(count), centred / (count + 5.0)], axis=1))
        return parts


class RaterPooling(tf.keras.layers.Layer):
    """The candidate side's raters parts: the movie's stored raters (`source`), the asking
    user left out of them, pooled by `mean` and `rated` (rating-weighted)."""

    def __init__(self, source: H.StoredHistory, mean: MeanPooling,
                 rated: RatingWeightedPooling, **kwargs):
        super().__init__(**kwargs)
        self.source, self.mean, self.rated = source, mean, rated

    def call(self, inputs):
        raters = self.source(_flat(inputs[F.MOVIE_ID_XF]), fields=(H.IDS, H.RATINGS))
        ids = raters[H.IDS]
        keep = tf.not_equal(ids, 0)
        if F.USER_ID_XF in inputs:  # never the asking user's own rating
            asking = tf.cast(tf.reshape(inputs[F.USER_ID_XF], [-1, 1]), tf.int32) + 1
            keep &= tf.not_equal(ids, asking)
        return [self.mean(ids, keep=keep),
                self.rated(ids, ratings=raters[H.RATINGS], keep=keep)]


class Tower(tf.keras.layers.Layer):
    """features + context parts -> concatenation -> projection: [batch, embedding_dim]."""

    def __init__(self, features: FeatureEmbedding, context: Sequence[tf.keras.layers.Layer],
                 projection: tf.keras.layers.Layer, **kwargs):
        super().__init__(**kwargs)
        self.features = features
        self.context = list(context)
        self.projection = projection

    def call(self, inputs, training=False):
        parts = self.features(inputs)
        for block in self.context:
            parts = parts + block(inputs)
        return self.projection(tf.concat(parts, axis=1), training=training)


def _movie_table(vocab, hp, name):
    """Embeddings of movies in a history (row 0: padding)."""
    return TaggedEmbedding(vocab.sizes[F.MOVIE_ID_XF] + 1, hp.embedding_dim,
                           tag=F.MOVIE_ID_XF, reserved=1,
                           embeddings_regularizer=regularizer(hp), name=name)


def _user_table(vocab, hp, name):
    """Embeddings of users among a movie's raters (row 0: padding)."""
    return TaggedEmbedding(vocab.sizes[F.USER_ID_XF] + 1, hp.embedding_dim,
                           tag=F.USER_ID_XF, reserved=1,
                           embeddings_regularizer=regularizer(hp), name=name)


def user_history_pooling(vocab, hp) -> UserHistoryPooling:
    return UserHistoryPooling(
        MeanPooling(_movie_table(vocab, hp, "history_embedding"), name="history_mean"),
        rated=RatingWeightedPooling(_movie_table(vocab, hp, "rated_embedding"),
                                    name="history_rated") if hp.history_ratings else None,
        recent=[RecencyPooling(_movie_table(vocab, hp, f"recent_{i}_embedding"), tau,
                               name=f"history_recent_{i}")
                for i, tau in enumerate(hp.recency_taus)],
        session=SessionPooling(_movie_table(vocab, hp, "session_embedding"), hp.session_tau,
                               name="history_session") if hp.session_tau else None,
        name="history")


def rater_pooling(vocab, hp, raters) -> RaterPooling:
    """raters: user_history(...)'s tables with users and movies swapped (times unused)."""
    users, _, ratings = raters
    return RaterPooling(
        H.StoredHistory(users, ratings, name="raters"),
        MeanPooling(_user_table(vocab, hp, "rater_embedding"), name="rater_mean"),
        RatingWeightedPooling(_user_table(vocab, hp, "rater_rated_embedding"),
                              name="rater_rated"),
        name="raters")


def query_tower(vocab, hp, name="query_tower") -> Tower:
    """The user at a time: their features, and (history_len > 0) their history's
    poolings."""
    context = [user_history_pooling(vocab, hp)] if hp.history_len else []
    return Tower(FeatureEmbedding(F.QUERY_XF, vocab, hp,
                                  main_keys=(F.USER_ID_XF, F.TIMESTAMP_BUCKET_XF),
                                  name="features"),
                 context, mlp(hp.query_layers, hp.embedding_dim, hp, name=f"{name}_mlp"),
                 name=name)


def candidate_tower(vocab, hp, name="candidate_tower", raters=None) -> Tower:
    """The movie: its features, and (rater_history_len > 0, `raters` given) its stored
    raters' poolings."""
    context = [rater_pooling(vocab, hp, raters)] \
        if raters is not None and hp.rater_history_len else []
    return Tower(FeatureEmbedding(F.CANDIDATE_XF, vocab, hp,
                                  main_keys=(F.MOVIE_ID_XF, F.TITLE_TOKENS_XF, F.GENRES_XF),
                                  name="features"),
                 context, mlp(hp.candidate_layers, hp.embedding_dim, hp, name=f"{name}_mlp"),
                 name=name)

"""The rating from the user's history: an asymmetric factor model with the user's biases
read from the history (Koren 2008's asymmetric SVD / SVD++, the user represented by what
they rated rather than by an id alone), so that it rates for a user it never saw as well
as for one it did.

For user u at time t with history H (their ratings before t, trainer/history.py; the
rated movie itself left out), e_j = (r_j - mean) - b_j the history's residuals against
the movie biases:

    r_hat = mean + b_m                                   movie bias
          + a_user   * sum_j e_j / (|H| + USER_SHRINK)   the user's bias, shrunk
          + a_recent * sum_j w_j e_j / (sum_j w_j + RECENT_SHRINK),  w_j = exp(-rank_j / tau)
                                                         the user's mood of late
          + q_m . (p_u + sum_j y_j e_j / sqrt(|H| + 1) + sum_j x_j / sqrt(|H| + 1))
          + a_knn    * sum_j s_mj d_j / (sum_j s_mj + KNN_SHRINK),  d_j = e_j - b_u
                                                         item-kNN on the history's residuals
          + a_sess   * sum_j v_j d_j / (sum_j v_j + SESSION_SHRINK),  v_j = exp(-(t - t_j) / 60 s)
                                                         the same sitting's residuals
          + c(|H|)                                       a bias per history length bucket

q_m, p_u, x_j, y_j: factors of the movie, the user (an out-of-vocabulary id for users
never seen, and for hp.user_dropout of the training examples; plus factors of their age
bucket, gender, occupation and zip prefix), and of each history movie
(what they rated, and how). s_mj: the shrunk Pearson similarity of movies m and j on the
training ratings' baseline residuals, kept for each movie's hp.history_neighbors most
similar movies (trainer/neighborhood.py's similar_movies, computed before training; 0
for the others). a_user, a_recent, a_knn, a_sess are learned. Every table is tagged for warm start
(trainer/embedding.py).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from trainer import features as F
from trainer.embedding import TaggedEmbedding

USER_SHRINK = 5.0
KNN_SHRINK = 1.0
SESSION_TAU = 60.0  # seconds
SESSION_SHRINK = 2.0
COUNT_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)  # history lengths
RECENT_SHRINK = 2.0
RECENT_TAU = 10.0  # positions


def _flat(x):
    return tf.reshape(x, [-1])


class HistoryRatingHead(tf.keras.layers.Layer):
    def __init__(self, vocab, hp, mean_rating: float, neighbors=None, name="rating_head"):
        """neighbors: ([movies, k] movie_id_xf of each movie's most similar movies, -1:
        none; [movies, k] their similarities), or None (no kNN term)."""
        super().__init__(name=name)
        self.neighbors = None
        if neighbors is not None:
            ids, sims = neighbors
            self.neighbors = tf.Variable(np.asarray(ids, np.int32) + 1, trainable=False,
                                         name="neighbor_ids")  # as history ids; 0: none
            self.similarities = tf.Variable(np.asarray(sims, np.float32), trainable=False,
                                            name="neighbor_similarities")
        dim = hp.rating_dim
        reg = tf.keras.regularizers.l2(hp.rating_l2) if hp.rating_l2 else None
        movies = vocab.sizes[F.MOVIE_ID_XF] + 1  # row 0: a history's padding

        def table(size, width, tag, name, initializer=None):
            return TaggedEmbedding(
                size, width, tag=tag, reserved=1 if tag == F.MOVIE_ID_XF else 0,
                embeddings_regularizer=None if initializer == "zeros" else reg,
                embeddings_initializer=initializer or tf.keras.initializers.RandomNormal(
                    stddev=0.01), name=name)

        self.movie_bias = table(movies, 1, F.MOVIE_ID_XF, "movie_bias", "zeros")
        self.movie_factor = table(movies, dim, F.MOVIE_ID_XF, "movie_factor")
        self.rated_factor = table(movies, dim, F.MOVIE_ID_XF, "history_rated_factor")
        self.seen_factor = table(movies, dim, F.MOVIE_ID_XF, "history_seen_factor")
        self.user_factor = table(vocab.sizes[F.USER_ID_XF], dim, F.USER_ID_XF, "user_factor")
        # what the request says of a user the model may not know: their demographics
        self.demographic_factors = {}
        for key in (F.AGE_BUCKET_XF, F.GENDER_XF, F.OCCUPATION_XF, F.ZIP_PREFIX_XF):
            options = dict(embeddings_regularizer=reg, name=f"{key}_factor",
                           embeddings_initializer=tf.keras.initializers.RandomNormal(
                               stddev=0.01))
            self.demographic_factors[key] = (
                TaggedEmbedding(vocab.sizes[key], dim, tag=key, **options) if key in F.VOCABS
                else tf.keras.layers.Embedding(vocab.sizes[key], dim, **options))
        # how far into their history the user is (users rate their first movies apart)
        self.count_bias = tf.keras.layers.Embedding(len(COUNT_BUCKETS) + 1, 1,
                                                    embeddings_initializer="zeros",
                                                    name="history_count_bias")
        self.mean_rating = float(mean_rating)

    def build(self, input_shape=None):
        self.user_weight = self.add_weight(name="user_weight", shape=(),
                                           initializer=tf.keras.initializers.Constant(1.0))
        self.recent_weight = self.add_weight(name="recent_weight", shape=(),
                                             initializer=tf.keras.initializers.Constant(0.5))
        self.knn_weight = self.add_weight(name="knn_weight", shape=(),
                                          initializer=tf.keras.initializers.Constant(1.0))
        self.session_weight = self.add_weight(name="session_weight", shape=(),
                                              initializer=tf.keras.initializers.Constant(0.5))
        super().build(input_shape)

    def call(self, features, query_embedding=None, candidate_embedding=None,
             training=False):
        movie = tf.cast(_flat(features[F.MOVIE_ID_XF]), tf.int32) + 1
        user = _flat(features[F.USER_ID_XF])
        rating = self.mean_rating + self.movie_bias(movie)[:, 0]
        factors = self.user_factor(user)
        for key, layer in self.demographic_factors.items():
            if key in features:
                factors += layer(_flat(features[key]))
        if F.HISTORY_IDS_XF in features:
            ids = tf.cast(features[F.HISTORY_IDS_XF], tf.int32)
            keep = tf.not_equal(ids, 0) & tf.not_equal(ids, movie[:, None])
            mask = tf.cast(keep, tf.float32)
            residual = (tf.cast(features[F.HISTORY_RATINGS_XF], tf.float32)
                        - self.movie_bias(ids)[..., 0]) * mask
            count = tf.reduce_sum(mask, axis=1)
            rating += self.count_bias(tf.raw_ops.Bucketize(
                input=count, boundaries=list(COUNT_BUCKETS)))[:, 0]
            user_bias = tf.reduce_sum(residual, axis=1) / (count + USER_SHRINK)
            rating += self.user_weight * user_bias
            if self.neighbors is not None:
                rating += self.knn_weight * self._knn(movie, ids, residual - user_bias[:, None],
                                                      mask)
            if F.TIMESTAMP_XF in features:  # the sitting: ratings of the last minutes
                now = tf.reshape(tf.cast(features[F.TIMESTAMP_XF], tf.int64), [-1, 1])
                gap = tf.cast(tf.maximum(now - tf.cast(features[F.HISTORY_TIMES_XF], tf.int64),
                                         0), tf.float32)
                close = tf.exp(-gap / SESSION_TAU) * mask
                rating += self.session_weight * (
                    tf.reduce_sum(close * (residual - user_bias[:, None]), axis=1)
                    / (tf.reduce_sum(close, axis=1) + SESSION_SHRINK))
            position = tf.cast(tf.range(tf.shape(ids)[1]), tf.float32)[None, :]
            weight = tf.exp(-position / RECENT_TAU) * mask
            rating += self.recent_weight * (tf.reduce_sum(weight * residual, axis=1)
                                            / (tf.reduce_sum(weight, axis=1) + RECENT_SHRINK))
            norm = tf.sqrt(count + 1.0)[:, None]
            factors += (tf.reduce_sum(self.rated_factor(ids) * residual[..., None], axis=1)
                        + tf.reduce_sum(self.seen_factor(ids) * mask[..., None], axis=1)) / norm
        return rating + tf.reduce_sum(self.movie_factor(movie) * factors, axis=1)

    def _knn(self, movie, ids, residual, mask):
        """sum_j s_mj d_j / (sum_j s_mj + KNN_SHRINK) over the history (ids [batch, L])."""
        rows = tf.clip_by_value(movie - 1, 0, tf.shape(self.neighbors)[0] - 1)
        inside = (movie >= 1) & (movie - 1 < tf.shape(self.neighbors)[0])
        near = tf.gather(self.neighbors, rows)  # [batch, k]
        sims = tf.gather(self.similarities, rows) * tf.cast(inside, tf.float32)[:, None]
        match = tf.cast(tf.equal(ids[:, :, None], near[:, None, :])
                        & tf.not_equal(near, 0)[:, None, :], tf.float32)
        similarity = tf.reduce_sum(match * sims[:, None, :], axis=2) * mask  # [batch, L]
        return (tf.reduce_sum(similarity * residual, axis=1)
                / (tf.reduce_sum(similarity, axis=1) + KNN_SHRINK))

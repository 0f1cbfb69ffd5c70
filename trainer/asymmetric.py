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

q_m, p_u, x_j, y_j: factors of the movie, the user (an out-of-vocabulary id for users
never seen, and for hp.user_dropout of the training examples), and of each history movie
(what they rated, and how). a_user, a_recent are learned. Every table is tagged for
warm start (trainer/embedding.py).
"""

from __future__ import annotations

import tensorflow as tf

from trainer import features as F
from trainer.embedding import TaggedEmbedding

USER_SHRINK = 5.0
RECENT_SHRINK = 2.0
RECENT_TAU = 10.0  # positions


def _flat(x):
    return tf.reshape(x, [-1])


class HistoryRatingHead(tf.keras.layers.Layer):
    def __init__(self, vocab, hp, mean_rating: float, name="rating_head"):
        super().__init__(name=name)
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
        self.mean_rating = float(mean_rating)

    def build(self, input_shape=None):
        self.user_weight = self.add_weight(name="user_weight", shape=(),
                                           initializer=tf.keras.initializers.Constant(1.0))
        self.recent_weight = self.add_weight(name="recent_weight", shape=(),
                                             initializer=tf.keras.initializers.Constant(0.5))
        super().build(input_shape)

    def call(self, features, query_embedding=None, candidate_embedding=None,
             training=False):
        movie = tf.cast(_flat(features[F.MOVIE_ID_XF]), tf.int32) + 1
        user = _flat(features[F.USER_ID_XF])
        rating = self.mean_rating + self.movie_bias(movie)[:, 0]
        factors = self.user_factor(user)
        if F.HISTORY_IDS_XF in features:
            ids = tf.cast(features[F.HISTORY_IDS_XF], tf.int32)
            keep = tf.not_equal(ids, 0) & tf.not_equal(ids, movie[:, None])
            mask = tf.cast(keep, tf.float32)
            residual = (tf.cast(features[F.HISTORY_RATINGS_XF], tf.float32)
                        - self.movie_bias(ids)[..., 0]) * mask
            count = tf.reduce_sum(mask, axis=1)
            rating += self.user_weight * tf.reduce_sum(residual, axis=1) / (count + USER_SHRINK)
            position = tf.cast(tf.range(tf.shape(ids)[1]), tf.float32)[None, :]
            weight = tf.exp(-position / RECENT_TAU) * mask
            rating += self.recent_weight * (tf.reduce_sum(weight * residual, axis=1)
                                            / (tf.reduce_sum(weight, axis=1) + RECENT_SHRINK))
            norm = tf.sqrt(count + 1.0)[:, None]
            factors += (tf.reduce_sum(self.rated_factor(ids) * residual[..., None], axis=1)
                        + tf.reduce_sum(self.seen_factor(ids) * mask[..., None], axis=1)) / norm
        return rating + tf.reduce_sum(self.movie_factor(movie) * factors, axis=1)

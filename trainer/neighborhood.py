"""The residual neighbourhood: what the rating head got wrong on the user's own training
ratings of similar movies, and of the same sitting, corrects its prediction.

A factor model leaves structure in its errors that a neighbourhood model over those errors
picks up (Koren's integrated model; the blends that won the Netflix Prize). After training,
the model rates its own training ratings and keeps the residuals e = r - r_hat. A rating of
movie i by user u at time t then adds

    knn_weight     * sum_j s_ij e_uj / (sum_j s_ij + KNN_SHRINK)
                     over the `neighbors` movies j most similar to i that u rated in training
    session_weight * sum_j w_j e_uj / (sum_j w_j + SESSION_SHRINK),  w_j = exp(-(t - t_j) / tau)
                     over u's latest SESSION_WINDOW training ratings at or before t

s_ij is the shrunk Pearson correlation of the two movies' baseline residuals (ratings minus
global mean, user and movie biases) over their common raters, kept when positive. Only
ratings at or before t count in the session term, so a prediction uses nothing a live
request would not know; the rated movie's own rating never counts.
"""

from __future__ import annotations

import time

import numpy as np
import tensorflow as tf

from trainer import features as F

KNN_SHRINK = 1.0  # pseudo-similarity of "no error" in the neighbour average
SESSION_SHRINK = 2.0  # pseudo-weight of "no error" in the session average
SIMILARITY_SHRINK = 100.0  # co-raters at which a correlation counts half
SESSION_WINDOW = 32  # the user's latest training ratings the session term reads
_USER_SHIFT = 2**32  # keys: user id * 2**32 + movie id, or + whole seconds
_CELLS = 2_000_000  # similarity block size (movies x movies): ~16 MB per dense array


def baseline_residuals(users, movies, ratings, iterations: int = 10,
                       user_shrink: float = 10.0, movie_shrink: float = 25.0) -> np.ndarray:
    """Ratings minus the global mean and shrunk user and movie biases (alternating means)."""
    ratings = np.asarray(ratings, dtype=np.float64)
    residual = ratings - ratings.mean()
    user_bias = np.zeros(int(users.max()) + 1)
    movie_bias = np.zeros(int(movies.max()) + 1)
    for _ in range(iterations):
        r = residual - user_bias[users]
        movie_bias = (np.bincount(movies, r, minlength=len(movie_bias))
                      / (np.bincount(movies, minlength=len(movie_bias)) + movie_shrink))
        r = residual - movie_bias[movies]
        user_bias = (np.bincount(users, r, minlength=len(user_bias))
                     / (np.bincount(users, minlength=len(user_bias)) + user_shrink))
    return residual - user_bias[users] - movie_bias[movies]


def similar_movies(users, movies, ratings, num_movies: int, k: int):
    """([num_movies, k] most similar movie ids, their similarities; -1 / 0 when fewer)."""
    from scipy import sparse

    users = np.asarray(users, dtype=np.int64)
    movies = np.asarray(movies, dtype=np.int64)
    ids = np.full((num_movies, k), -1, dtype=np.int32)
    sims = np.zeros((num_movies, k), dtype=np.float32)
    if len(users) == 0 or k <= 0:
        return ids, sims
    values = baseline_residuals(users, movies, ratings)
    shape = (int(users.max()) + 1, num_movies)
    b = sparse.csr_matrix((values, (users, movies)), shape=shape)
    rated = sparse.csr_matrix((np.ones(len(users)), (users, movies)), shape=shape)
    squared = b.multiply(b).tocsr()
    b_t, rated_t, squared_t = b.T.tocsr(), rated.T.tocsr(), squared.T.tocsr()
    chunk = max(1, _CELLS // num_movies)
    for start in range(0, num_movies, chunk):
        rows = slice(start, min(start + chunk, num_movies))
        product = (b_t[rows] @ b).toarray()
        norm = np.sqrt((squared_t[rows] @ rated).toarray() * (rated_t[rows] @ squared).toarray())
        common = (rated_t[rows] @ rated).toarray()
        sim = np.where(norm > 0, product / np.maximum(norm, 1e-12), 0.0)
        sim *= common / (common + SIMILARITY_SHRINK)
        sim[np.arange(sim.shape[0]), np.arange(rows.start, rows.stop)] = 0.0  # not itself
        sim = np.maximum(sim, 0.0)
        top = np.argpartition(-sim, min(k, num_movies - 1), axis=1)[:, :k]
        top_sim = np.take_along_axis(sim, top, axis=1)
        ids[rows, :top.shape[1]] = np.where(top_sim > 0, top, -1)
        sims[rows, :top.shape[1]] = top_sim
    return ids, sims


def _log_order(keys) -> np.ndarray:
    """The order of a log's rows: by key (stable)."""
    order = np.argsort(keys, kind="stable")
    return order.astype(np.int32) if len(order) < 2**31 else order


def _sorted_log(order, keys, *columns):
    """Rows in `order`, after a sentinel row (key -1) that no query matches."""
    return (np.concatenate([[-1], np.asarray(keys)[order]]).astype(np.int64),
            *(np.concatenate([[0], np.asarray(c)[order]]) for c in columns))


class ResidualNeighborhood(tf.keras.layers.Layer):
    """The correction above, from the training ratings' ids, times and residuals.

    Part of the rating model from its construction (trainer/model.py's RatingModel): built
    from the training ratings before training with `residuals` None (all zero: no
    correction), then given the trained model's errors on those same ratings, in the same
    order, by set_residuals()."""

    def __init__(self, users, movies, times, residuals, neighbors, similarities,
                 knn_weight: float, session_weight: float, session_tau: float,
                 name="residual_neighborhood"):
        super().__init__(name=name, trainable=False)
        users = np.asarray(users, dtype=np.int64)
        movies = np.asarray(movies, dtype=np.int64)
        times = np.asarray(times, dtype=np.float32)
        zeros = np.zeros(len(users), dtype=np.float32)
        pair_keys = users * _USER_SHIFT + movies
        time_keys = users * _USER_SHIFT + np.floor(times).astype(np.int64)
        # where each rating's residual goes in the two sorted logs (set_residuals)
        self._pair_order, self._time_order = _log_order(pair_keys), _log_order(time_keys)
        pair_keys, pair_residuals = _sorted_log(self._pair_order, pair_keys, zeros)
        time_keys, time_movies, time_seconds, time_residuals = _sorted_log(
            self._time_order, time_keys, movies, times, zeros)

        def variable(value, dtype, name):
            return tf.Variable(np.asarray(value), trainable=False, dtype=dtype, name=name)

        self._pair_keys = variable(pair_keys, tf.int64, "pair_keys")
        self._pair_residuals = variable(pair_residuals, tf.float32, "pair_residuals")
        self._time_keys = variable(time_keys, tf.int64, "time_keys")
        self._time_movies = variable(time_movies, tf.int32, "time_movies")
        self._time_seconds = variable(time_seconds, tf.float32, "time_seconds")
        self._time_residuals = variable(time_residuals, tf.float32, "time_residuals")
        self._neighbors = variable(neighbors, tf.int64, "neighbors")
        self._similarities = variable(similarities, tf.float32, "similarities")
        self._knn_weight = float(knn_weight)
        self._session_weight = float(session_weight)
        self._session_tau = float(session_tau)
        self.seconds = 0.0  # spent building it and setting its residuals (training.json)
        if residuals is not None:
            self.set_residuals(residuals)

    @classmethod
    def from_ratings(cls, users, movies, times, ratings, num_movies: int, hp,
                     name="residual_neighborhood") -> "ResidualNeighborhood":
        """The neighbourhood of these training ratings (its residuals zero until
        set_residuals): each movie's hp.residual_neighbors most similar movies, and
        hp's residual_* weights and time scale."""
        started = time.time()
        similar, similarity = similar_movies(users, movies, ratings, num_movies,
                                             hp.residual_neighbors)
        layer = cls(users, movies, times, None, similar, similarity,
                    knn_weight=hp.residual_knn_weight,
                    session_weight=hp.residual_session_weight,
                    session_tau=hp.residual_session_tau, name=name)
        layer.seconds = time.time() - started
        return layer

    def set_residuals(self, residuals):
        """The errors e = r - r_hat on the ratings it was built from, in their order."""
        residuals = np.asarray(residuals, dtype=np.float32)
        if len(residuals) != len(self._pair_order):
            raise ValueError(f"{len(residuals)} residuals for a neighbourhood of "
                             f"{len(self._pair_order)} ratings")
        for variable, order in ((self._pair_residuals, self._pair_order),
                                (self._time_residuals, self._time_order)):
            variable.assign(np.concatenate([[0], residuals[order]]).astype(np.float32))

    def _lookup(self, keys, sorted_keys, values):
        """values at `keys` in the sorted log, and whether each key is there."""
        flat = tf.reshape(keys, [-1])
        rows = tf.minimum(tf.searchsorted(sorted_keys, flat, side="left", out_type=tf.int64),
                          tf.shape(sorted_keys, out_type=tf.int64)[0] - 1)
        found = tf.equal(tf.gather(sorted_keys, rows), flat)
        value = tf.where(found, tf.gather(values, rows), 0.0)
        return tf.reshape(value, tf.shape(keys)), tf.reshape(found, tf.shape(keys))

    def knn(self, users, movies):
        rows = tf.clip_by_value(movies, 0, tf.shape(self._neighbors, out_type=tf.int64)[0] - 1)
        inside = movies < tf.shape(self._neighbors, out_type=tf.int64)[0]
        neighbors = tf.gather(self._neighbors, rows)  # [batch, k]
        similarity = tf.gather(self._similarities, rows) * tf.cast(
            (neighbors >= 0) & inside[:, None], tf.float32)
        residual, rated = self._lookup(users[:, None] * _USER_SHIFT + neighbors,
                                       self._pair_keys, self._pair_residuals)
        similarity *= tf.cast(rated, tf.float32)
        return (tf.reduce_sum(similarity * residual, axis=1)
                / (tf.reduce_sum(similarity, axis=1) + KNN_SHRINK))

    def session(self, users, movies, seconds):
        query = users * _USER_SHIFT + tf.cast(tf.floor(seconds), tf.int64)
        end = tf.searchsorted(self._time_keys, query, side="right", out_type=tf.int64)
        rows = tf.maximum(end[:, None] - 1 - tf.range(SESSION_WINDOW, dtype=tf.int64)[None, :],
                          0)
        keep = (tf.equal(tf.math.floordiv(tf.gather(self._time_keys, rows), _USER_SHIFT),
                         users[:, None])
                & tf.not_equal(tf.cast(tf.gather(self._time_movies, rows), tf.int64),
                               movies[:, None]))
        gap = tf.maximum(seconds[:, None] - tf.gather(self._time_seconds, rows), 0.0)
        weight = tf.exp(-gap / self._session_tau) * tf.cast(keep, tf.float32)
        return (tf.reduce_sum(weight * tf.gather(self._time_residuals, rows), axis=1)
                / (tf.reduce_sum(weight, axis=1) + SESSION_SHRINK))

    def call(self, features):
        users = tf.cast(tf.reshape(features[F.USER_ID_XF], [-1]), tf.int64)
        movies = tf.cast(tf.reshape(features[F.MOVIE_ID_XF], [-1]), tf.int64)
        correction = self._knn_weight * self.knn(users, movies)
        if F.TIMESTAMP_S_XF in features and self._session_weight:
            seconds = tf.reshape(tf.cast(features[F.TIMESTAMP_S_XF], tf.float32), [-1])
            correction += self._session_weight * self.session(users, movies, seconds)
        return correction

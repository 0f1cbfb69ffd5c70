"""The residual neighbourhood: what the rating head got wrong on the user's own training
ratings of similar movies, and of the same sitting, corrects its prediction.

A factor model leaves structure in its errors that a neighbourhood model over those errors
picks up (Koren's integrated model; the blends that won the Netflix Prize). After training,
the model rates its own training ratings and keeps the residuals e = r - r_hat. A rating of
movie i by user u at time t then adds

    knn_weight     * sum_j s_ij e_uj / (sum_j s_ij + KNN_SHRINK)
                     over the `neighbors` movies j most similar to i that u rated in training
                     before t
    session_weight * sum_j w_j e_uj / (sum_j w_j + SESSION_SHRINK),  w_j = exp(-(t - t_j) / tau)
                     over u's latest SESSION_WINDOW training ratings at or before t

s_ij is the shrunk Pearson correlation of the two movies' baseline residuals (ratings minus
global mean, user and movie biases) over their common raters, kept when positive. Only
ratings before t count in the kNN term, and at or before t in the session term, so a
prediction uses nothing a live request would not know; the rated movie's own rating never
counts.
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


def _sorted_log(keys, *columns):
    """Rows sorted by key, after a sentinel row (key -1) that no query matches."""
    order = np.argsort(keys, kind="stable")
    return (np.concatenate([[-1], np.asarray(keys)[order]]).astype(np.int64),
            *(np.concatenate([[0], np.asarray(c)[order]]) for c in columns))


class ResidualNeighborhood(tf.keras.layers.Layer):
    """The correction above, from the training ratings' ids, times and residuals.

    A layer of the rating model from the model's construction (trainer/model.py's
    RatingModel), with its weights and time scale; it corrects nothing until it is fitted
    after training (fit(): the trained model's errors on its training ratings), which
    creates its tables. The exported model holds them."""

    def __init__(self, knn_weight: float, session_weight: float, session_tau: float,
                 neighbors: int = 30, name="residual_neighborhood"):
        super().__init__(name=name, trainable=False)
        self._knn_weight = float(knn_weight)
        self._session_weight = float(session_weight)
        self._session_tau = float(session_tau)
        self._k = int(neighbors)
        self.fitted = False
        self.seconds = 0.0  # what fit() took (training.json)

    @classmethod
    def from_hparams(cls, hp) -> "ResidualNeighborhood | None":
        """hp's residual_* settings; None when both weights are 0 (off)."""
        if not (hp.residual_knn_weight or hp.residual_session_weight):
            return None
        return cls(hp.residual_knn_weight, hp.residual_session_weight,
                   hp.residual_session_tau, neighbors=hp.residual_neighbors)

    def fit(self, users, movies, times, ratings, residuals, num_movies: int):
        """Fits it to training ratings (ids, times, ratings) and the trained model's
        errors on them: each movie's most similar movies (similar_movies), the logs."""
        started = time.time()
        similar, similarity = similar_movies(users, movies, ratings, num_movies, self._k)
        self.set_tables(users, movies, times, residuals, similar, similarity)
        self.seconds = time.time() - started

    def set_tables(self, users, movies, times, residuals, neighbors, similarities):
        """Creates its tables: the training ratings' ids, times and residuals, and each
        movie's `neighbors` ([movies, k] ids, -1 = none) with their `similarities`."""
        if self.fitted:
            raise ValueError(f"{self.name} is fitted already")
        users = np.asarray(users, dtype=np.int64)
        movies = np.asarray(movies, dtype=np.int64)
        times = np.asarray(times, dtype=np.float32)
        residuals = np.asarray(residuals, dtype=np.float32)
        pair_keys, pair_residuals, pair_seconds = _sorted_log(users * _USER_SHIFT + movies,
                                                              residuals, times)
        time_keys, time_movies, time_seconds, time_residuals = _sorted_log(
            users * _USER_SHIFT + np.floor(times).astype(np.int64), movies, times, residuals)

        def variable(value, dtype, name):
            return tf.Variable(np.asarray(value), trainable=False, dtype=dtype, name=name)

        self._pair_keys = variable(pair_keys, tf.int64, "pair_keys")
        self._pair_residuals = variable(pair_residuals, tf.float32, "pair_residuals")
        self._pair_seconds = variable(pair_seconds, tf.float32, "pair_seconds")
        self._time_keys = variable(time_keys, tf.int64, "time_keys")
        self._time_movies = variable(time_movies, tf.int32, "time_movies")
        self._time_seconds = variable(time_seconds, tf.float32, "time_seconds")
        self._time_residuals = variable(time_residuals, tf.float32, "time_residuals")
        self._neighbors = variable(neighbors, tf.int64, "neighbors")
        self._similarities = variable(similarities, tf.float32, "similarities")
        self.fitted = True

    def _lookup(self, keys, sorted_keys, values):
        """values at `keys` in the sorted log, and whether each key is there."""
        flat = tf.reshape(keys, [-1])
        rows = tf.minimum(tf.searchsorted(sorted_keys, flat, side="left", out_type=tf.int64),
                          tf.shape(sorted_keys, out_type=tf.int64)[0] - 1)
        found = tf.equal(tf.gather(sorted_keys, rows), flat)
        value = tf.where(found, tf.gather(values, rows), 0.0)
        return tf.reshape(value, tf.shape(keys)), tf.reshape(found, tf.shape(keys))

    def knn(self, users, movies, seconds=None):
        """The kNN term; with `seconds` ([batch], the examples' times), only the user's
        ratings strictly before it count (a request never reads a later rating)."""
        rows = tf.clip_by_value(movies, 0, tf.shape(self._neighbors, out_type=tf.int64)[0] - 1)
        inside = movies < tf.shape(self._neighbors, out_type=tf.int64)[0]
        neighbors = tf.gather(self._neighbors, rows)  # [batch, k]
        similarity = tf.gather(self._similarities, rows) * tf.cast(
            (neighbors >= 0) & inside[:, None], tf.float32)
        residual, rated = self._lookup(users[:, None] * _USER_SHIFT + neighbors,
                                       self._pair_keys, self._pair_residuals)
        if seconds is not None:
            when, _ = self._lookup(users[:, None] * _USER_SHIFT + neighbors,
                                   self._pair_keys, self._pair_seconds)
            rated &= when < seconds[:, None]
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
        """The correction of each example's rating (zeros until fitted)."""
        if not self.fitted:
            return tf.zeros_like(tf.reshape(features[F.USER_ID_XF], [-1]), tf.float32)
        users = tf.cast(tf.reshape(features[F.USER_ID_XF], [-1]), tf.int64)
        movies = tf.cast(tf.reshape(features[F.MOVIE_ID_XF], [-1]), tf.int64)
        seconds = (tf.reshape(tf.cast(features[F.TIMESTAMP_S_XF], tf.float32), [-1])
                   if F.TIMESTAMP_S_XF in features else None)
        correction = self._knn_weight * self.knn(users, movies, seconds)
        if seconds is not None and self._session_weight:
            correction += self._session_weight * self.session(users, movies, seconds)
        return correction

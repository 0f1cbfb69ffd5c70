"""A biased matrix factorization fitted by alternating least squares after training, blended
into the rating, with the user folded in from their history at request time.

Fitted on the training ratings (trainer/fit.py's fit_factorization), with the model's mean
rating mu:

    r_hat_mf(u, m) = mu + b_u + b_m + p_u . q_m

by ALS (each side an exact ridge regression given the other: factors shrunk by `l2`, biases
by `bias_l2`), the SGD-trained heads' errors and this one's being different (a blend of the
two rates better than either: on ML-100K's random split 0.927 and 0.905 alone, 0.896
blended, docs/benchmarks.md). The rating is then (1 - weight) * the heads' rating + weight *
r_hat_mf, outside training only.

At a request the user's (b_u, p_u) are folded in from the history the towers read
(trainer/history.py: stored and request ratings before the request's time): the ratings
newer than the user's newest training rating update the trained (b_u, p_u) as a ridge
regression against the fixed movie factors, with the trained ones as its prior,

    [b_u, p_u] = (sum_j x_j x_j' + L)^-1 (sum_j x_j (r_j - mu - b_j) + L [b_u0, p_u0]),
    x_j = [1, q_j],  L = diag(bias_l2, fold_l2, ..., fold_l2)  (fold_l2: l2 unless set)

so a user the model never saw (prior 0, every history rating new) is rated from their
history, and a known user with no new rating gets exactly their trained factors. With a
half-life h, rating j of age a (before the request) counts 2^(-a / h) + RECENT_FLOOR times
(taste drifts; on ML-100K's replay, in numpy, a 7-day half-life took the fold-in alone from
0.948 to 0.942).

Two more terms of the fold-in, each off at 0:

- prior_scale: a user the model never saw starts, instead of from 0 with L, from the
  trained users' distribution (empirical Bayes): the prior is the mean of the trained
  users' [b_u, p_u] and L = prior_scale * sigma^2 * Sigma^-1, Sigma their covariance,
  sigma^2 the fit's mean squared training error.
- session_tau: the sitting's mood. The design gains a column g_j = exp(-a_j / session_tau)
  (a_j the rating's age at the request) with prior 0 and L entry session_l2, and the rating
  adds its coefficient (g = 1 at the request): the user's residual of the last minutes.

Both chosen by a replay inside the training ratings (their newest 20% replayed on the
older 80%, never the eval split: benchmarks/fold_in.py, docs/benchmarks.md "Fold-in
terms").

With `members` > 1 the layer is an ensemble: that many ALS fits from different random
starts (seeds 0, 1, ...), each folding the user in against its own movie factors, their
ratings averaged. ALS's answer depends on its start (on u1, one fit 0.922 to 0.930 RMSE
alone, three averaged 0.919: docs/benchmarks.md); the members are solved side by side,
their tables stacked on a leading member axis.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import tensorflow as tf

from trainer import features as F

_CHUNK = 100_000  # ratings per block of outer products (~176 MB at 21 x 21 floats)
_NEVER = np.iinfo(np.int64).min
RECENT_FLOOR = 0.1  # the weight of a rating far older than the half-life, plus 2^(-age/h)


def _ridge(rows, design, targets, num_rows: int, reg: np.ndarray) -> np.ndarray:
    """[num_rows, k]: per row id, argmin_a sum (t - x.a)^2 + a' reg a over its (design
    row x, target t) pairs; rows without pairs get 0."""
    out = np.zeros((num_rows, design.shape[1]))
    order = np.argsort(rows, kind="stable")
    rows, design, targets = rows[order], design[order], targets[order]
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if len(rows) else np.zeros(0, int)
    begin = 0
    while begin < len(starts):
        # whole rows, about _CHUNK ratings at a time
        first = starts[begin]
        end = int(np.searchsorted(starts, first + _CHUNK, side="left"))
        end = max(end, begin + 1)
        last = starts[end] if end < len(starts) else len(rows)
        x, t = design[first:last], targets[first:last]
        bounds = starts[begin:end] - first
        gram = np.add.reduceat(x[:, :, None] * x[:, None, :], bounds, axis=0)
        rhs = np.add.reduceat(x * t[:, None], bounds, axis=0)
        ids = rows[starts[begin:end]]
        out[ids] = np.linalg.solve(gram + reg, rhs[..., None])[..., 0]
        begin = end
    return out


def fit_als(users, movies, ratings, num_users: int, num_movies: int, dim: int, l2: float,
            bias_l2: float, iterations: int, mean: float, seed: int = 0) -> dict:
    """{user_bias [U], user_factors [U, dim], movie_bias [M], movie_factors [M, dim]} of
    ratings (user, movie indices) around `mean`, by `iterations` rounds of ALS."""
    users = np.asarray(users, np.int64)
    movies = np.asarray(movies, np.int64)
    residual = np.asarray(ratings, np.float64) - mean
    rng = np.random.default_rng(seed)
    q = np.hstack([np.zeros((num_movies, 1)), rng.normal(0.0, 0.1, (num_movies, dim))])
    p = np.zeros((num_users, dim + 1))
    reg = np.diag([bias_l2] + [l2] * dim)
    for _ in range(iterations):
        # users: [b_u, p_u] against [1, q_m], targets r - mu - b_m
        p = _ridge(users, np.hstack([np.ones((len(movies), 1)), q[movies, 1:]]),
                   residual - q[movies, 0], num_users, reg)
        q = _ridge(movies, np.hstack([np.ones((len(users), 1)), p[users, 1:]]),
                   residual - p[users, 0], num_movies, reg)
    return {"user_bias": p[:, 0], "user_factors": p[:, 1:],
            "movie_bias": q[:, 0], "movie_factors": q[:, 1:]}


class FoldedFactorization(tf.keras.layers.Layer):
    """The factorization as a layer of the rating model: unfitted (None tables) until
    `fit`; then call(features) -> r_hat_mf [batch], the user folded in from the history
    features (F.HISTORY_IDS_XF: movie_id_xf + 1, 0 padding; F.HISTORY_RATINGS_XF: the
    rating minus the model's mean; F.HISTORY_TIMES_XF), the mean over `members` fits.

    Fitted tables carry a leading member axis: user_prior [members, users, k],
    movie_terms [members, 1 + movies, k] (row 0: padding), unknown_prior [members, k]."""

    def __init__(self, dim: int, l2: float, bias_l2: float, iterations: int, weight: float,
                 half_life_days: float = 0.0, fold_l2: float = 0.0,
                 prior_scale: float = 0.0, session_tau: float = 0.0,
                 session_l2: float = 0.0, members: int = 1, name: str = "factorization"):
        super().__init__(name=name, trainable=False)
        if int(members) < 1:
            raise ValueError(f"a factorization needs at least one member, not {members}")
        self.members = int(members)
        self.dim, self.l2, self.bias_l2 = int(dim), float(l2), float(bias_l2)
        self.fold_l2 = float(fold_l2) if fold_l2 > 0 else self.l2
        self.iterations, self.weight = int(iterations), float(weight)
        self.half_life = float(half_life_days) * 86400.0
        self.prior_scale = float(prior_scale)
        self.session_tau, self.session_l2 = float(session_tau), float(session_l2)
        if self.session_tau > 0 and self.session_l2 <= 0:
            raise ValueError("a session term (session_tau > 0) needs session_l2 > 0")
        self.fitted = False

    @classmethod
    def from_hparams(cls, hp) -> "FoldedFactorization | None":
        if not hp.mf_dim or hp.mf_weight <= 0:
            return None
        return cls(hp.mf_dim, hp.mf_l2, hp.mf_bias_l2, hp.mf_iterations, hp.mf_weight,
                   hp.mf_half_life_days, hp.mf_fold_l2, hp.mf_prior_scale,
                   hp.mf_session_tau, hp.mf_session_l2, hp.mf_members)

    def fit(self, users, movies, times, ratings, num_users: int, num_movies: int,
            mean: float):
        """Fits the factors on the training ratings (user_id_xf, movie_id_xf, raw times,
        ratings); records each user's newest training time. Returns the seconds it took."""
        if self.fitted:
            raise ValueError(f"{self.name} is fitted already")
        started = time.time()
        newest = np.full(num_users, _NEVER, np.int64)
        np.maximum.at(newest, np.asarray(users, np.int64), np.asarray(times, np.int64))
        regularizer = np.diag([self.bias_l2] + [self.fold_l2] * self.dim)
        user_terms, movie_terms, priors, unknowns = [], [], [], []
        for seed in range(self.members):
            tables = fit_als(users, movies, ratings, num_users, num_movies, self.dim,
                             self.l2, self.bias_l2, self.iterations, mean, seed=seed)
            user_terms.append(np.hstack([tables["user_bias"][:, None],
                                         tables["user_factors"]]))
            # row 0: history padding (movie_id_xf + 1 indexes the others)
            movie_terms.append(np.vstack([np.zeros((1, self.dim + 1)), np.hstack(
                [tables["movie_bias"][:, None], tables["movie_factors"]])]))
            if self.prior_scale > 0:
                prior, unknown = self._population(tables, user_terms[-1], users, movies,
                                                  ratings, mean, newest != _NEVER)
                priors.append(prior)
                unknowns.append(self._with_session(unknown))

        def variable(value, dtype, name):
            return tf.Variable(np.asarray(value), trainable=False, dtype=dtype, name=name)

        self.mean = variable(mean, tf.float32, "mean")
        self.user_prior = variable(np.stack(user_terms), tf.float32, "user_prior")
        self.unknown_prior = self.unknown_regularizer = None
        if self.prior_scale > 0:
            self.unknown_prior = variable(np.stack(priors), tf.float32, "unknown_prior")
            self.unknown_regularizer = variable(np.stack(unknowns), tf.float32,
                                                "unknown_regularizer")
        self.movie_terms = variable(np.stack(movie_terms), tf.float32, "movie_terms")
        self.newest = variable(newest, tf.int64, "newest_training_time")
        self.regularizer = tf.constant(self._with_session(regularizer), tf.float32)
        self.fitted = True
        seconds = time.time() - started
        logging.getLogger("movierec.trainer").info(
            "factorization (ALS, %d member(s)): %.1f s", self.members, seconds)
        return seconds

    def _population(self, tables, users_terms, users, movies, ratings, mean, seen):
        """(prior [k], regularizer [k, k]) of a user the model never saw: the mean of the
        trained users' [b_u, p_u] (rows `seen` of users_terms), and prior_scale * sigma^2 *
        their covariance^-1."""
        terms = users_terms[seen]
        users, movies = np.asarray(users, np.int64), np.asarray(movies, np.int64)
        predicted = (mean + tables["user_bias"][users] + tables["movie_bias"][movies]
                     + np.sum(tables["user_factors"][users] * tables["movie_factors"][movies],
                              axis=1))
        noise = float(np.mean((np.asarray(ratings, np.float64) - predicted) ** 2))
        covariance = np.cov(terms.T) + 1e-6 * np.eye(terms.shape[1]) if len(terms) > 1 \
            else np.eye(terms.shape[1])
        return terms.mean(axis=0), self.prior_scale * noise * np.linalg.inv(covariance)

    def _with_session(self, regularizer: np.ndarray) -> np.ndarray:
        """`regularizer` with the session coefficient's entry appended (when on)."""
        if self.session_tau <= 0:
            return regularizer
        k = regularizer.shape[0]
        out = np.zeros((k + 1, k + 1))
        out[:k, :k], out[k, k] = regularizer, self.session_l2
        return out

    def call(self, features):
        # [members, batch, ...] throughout: each member folds the user in on its own tables
        users = tf.reshape(features[F.USER_ID_XF], [-1])
        movie = tf.gather(self.movie_terms, tf.reshape(features[F.MOVIE_ID_XF], [-1]) + 1,
                          axis=1)  # [members, batch, k]
        prior = tf.gather(self.user_prior, users, axis=1)  # [members, batch, k]
        newest = tf.gather(self.newest, users)
        unknown = tf.equal(newest, _NEVER)  # no training rating
        if self.unknown_prior is not None:  # never seen: the trained users' distribution
            prior = tf.where(unknown[None, :, None], self.unknown_prior[:, None], prior)
        if F.HISTORY_IDS_XF not in features:  # a model without history (history_len=0)
            return tf.reduce_mean(self._rated(prior, movie), axis=0)
        ids = features[F.HISTORY_IDS_XF]
        history = tf.gather(self.movie_terms, ids, axis=1)  # [members, batch, L, k]
        times = features[F.HISTORY_TIMES_XF]
        newer = tf.cast((ids > 0) & (times > newest[:, None]), tf.float32)  # [batch, L]
        now = tf.reshape(features[F.TIMESTAMP_XF], [-1, 1]) \
            if self.half_life > 0 or self.session_tau > 0 else None
        age = tf.cast(tf.maximum(now - times, 0), tf.float32) if now is not None else None
        if self.half_life > 0:  # older ratings count less: 2^(-age / half-life) + RECENT_FLOOR
            newer *= tf.pow(0.5, age / self.half_life) + RECENT_FLOOR
        regularizer = self.regularizer[None, None]  # [1 or members, 1 or batch, k', k']
        if self.unknown_prior is not None:
            regularizer = tf.where(unknown[None, :, None, None],
                                   self.unknown_regularizer[:, None], regularizer)
        x = tf.concat([tf.ones_like(history[..., :1]), history[..., 1:]], axis=-1)
        if self.session_tau > 0:  # the sitting's residual: exp(-age / tau), prior 0
            session = tf.exp(-age / self.session_tau)[None, ..., None]  # [1, batch, L, 1]
            x = tf.concat([x, tf.broadcast_to(session, tf.shape(x[..., :1]))], axis=-1)
            prior = tf.concat([prior, tf.zeros_like(prior[..., :1])], axis=-1)
        target = features[F.HISTORY_RATINGS_XF][None] - history[..., 0]  # r - mu - b_m
        xw = x * newer[None, ..., None]
        gram = tf.matmul(xw, x, transpose_a=True) + regularizer  # [members, batch, k', k']
        rhs = (tf.reduce_sum(xw * target[..., None], axis=2)
               + tf.linalg.matvec(regularizer, prior))
        solved = tf.linalg.solve(gram, rhs[..., None])[..., 0]  # [members, batch, k']
        rating = self._rated(solved[..., :self.dim + 1], movie)
        if self.session_tau > 0:
            rating += solved[..., self.dim + 1]
        return tf.reduce_mean(rating, axis=0)

    def _rated(self, user, movie):
        """mu + b_m + b_u + p_u . q_m of [..., k] user and movie terms."""
        return (self.mean + movie[..., 0] + user[..., 0]
                + tf.reduce_sum(user[..., 1:] * movie[..., 1:], axis=-1))

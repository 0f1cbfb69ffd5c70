"""The factorization blended into the rating (trainer/factorization.py): ALS's ridge steps
against a plain per-row solve, and the request-time fold-in against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from trainer import factorization as fz
from trainer import features as F


def _ratings(seed=0, users=30, movies=25, n=400):
    rng = np.random.default_rng(seed)
    u = rng.integers(0, users, n)
    m = rng.integers(0, movies, n)
    r = np.clip(np.round(3 + rng.normal(0, 1, n) + 0.05 * (u % 5) - 0.04 * (m % 7)), 1, 5)
    t = rng.integers(1_000, 2_000, n)
    return u, m, r, t


def _plain_ridge(rows, design, targets, num_rows, reg):
    out = np.zeros((num_rows, design.shape[1]))
    for row in np.unique(rows):
        x, y = design[rows == row], targets[rows == row]
        out[row] = np.linalg.solve(x.T @ x + reg, x.T @ y)
    return out


@pytest.mark.parametrize("chunk", [7, 100_000])
def test_ridge_blocks_solve_each_row_as_a_plain_solve_does(monkeypatch, chunk):
    monkeypatch.setattr(fz, "_CHUNK", chunk)  # several blocks, and one
    u, m, r, _ = _ratings()
    rng = np.random.default_rng(1)
    design = np.hstack([np.ones((len(u), 1)), rng.normal(size=(len(u), 4))])
    reg = np.diag([5.0, 15.0, 15.0, 15.0, 15.0])
    got = fz._ridge(u, design, r - 3.0, 31, reg)
    want = _plain_ridge(u, design, r - 3.0, 31, reg)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    assert np.all(fz._ridge(u, design, r, 31, reg)[30] == 0)  # a row without ratings


def test_als_lowers_the_training_error_below_the_biases():
    u, m, r, _ = _ratings()
    mean = float(r.mean())
    tables = fz.fit_als(u, m, r, 30, 25, dim=3, l2=1.0, bias_l2=1.0, iterations=10,
                        mean=mean)
    predicted = (mean + tables["user_bias"][u] + tables["movie_bias"][m]
                 + np.sum(tables["user_factors"][u] * tables["movie_factors"][m], axis=1))
    biases = fz.fit_als(u, m, r, 30, 25, dim=1, l2=1e9, bias_l2=1.0, iterations=10,
                        mean=mean)
    only_biases = mean + biases["user_bias"][u] + biases["movie_bias"][m]
    rmse = lambda p: float(np.sqrt(np.mean((p - r) ** 2)))  # noqa: E731
    assert rmse(predicted) < rmse(only_biases) < float(np.std(r))


@pytest.fixture(scope="module")
def layer():
    u, m, r, t = _ratings()
    fitted = fz.FoldedFactorization(dim=3, l2=2.0, bias_l2=1.0, iterations=8, weight=0.5)
    fitted.fit(u, m, t, r, num_users=31, num_movies=25, mean=float(r.mean()))
    return fitted, (u, m, r, t)


def _features(user, movie, history=(), times=(), mean=3.0):
    ids = [h[0] + 1 for h in history] or [0]
    ratings = [h[1] - mean for h in history] or [0.0]
    stamps = list(times) or [0]
    return {F.USER_ID_XF: tf.constant([[user]], tf.int64),
            F.MOVIE_ID_XF: tf.constant([[movie]], tf.int64),
            F.HISTORY_IDS_XF: tf.constant([ids], tf.int32),
            F.HISTORY_RATINGS_XF: tf.constant([ratings], tf.float32),
            F.HISTORY_TIMES_XF: tf.constant([stamps], tf.int64)}


def test_fold_in_keeps_a_known_users_factors_and_learns_an_unknown_one(layer):
    fitted, (u, m, r, t) = layer
    mean = float(fitted.mean.numpy())
    prior = fitted.user_prior.numpy()[0].astype(np.float64)
    movies = fitted.movie_terms.numpy()[0, 1:].astype(np.float64)  # [b_m, q_m]
    reg = np.diag([1.0, 2.0, 2.0, 2.0])

    def rated(x, movie):
        return mean + movies[movie, 0] + x[0] + x[1:] @ movies[movie, 1:]

    # user 4 with their training ratings only (none newer): the trained factors exactly
    mine = [(int(mm), float(rr)) for uu, mm, rr in zip(u, m, r) if uu == 4]
    older = [int(tt) for uu, tt in zip(u, t) if uu == 4]
    got = fitted(_features(4, 7, mine, older, mean)).numpy()[0]
    assert got == pytest.approx(rated(prior[4], 7), abs=1e-4)

    # an unknown user (the last, ratingless row) with three ratings: ridge from zero
    history = [(2, 5.0), (9, 1.0), (11, 4.0)]
    x = np.hstack([np.ones((3, 1)), movies[[2, 9, 11], 1:]])
    y = np.array([h[1] for h in history]) - mean - movies[[2, 9, 11], 0]
    folded = np.linalg.solve(x.T @ x + reg, x.T @ y)
    got = fitted(_features(30, 7, history, [5_000] * 3, mean)).numpy()[0]
    assert got == pytest.approx(rated(folded, 7), abs=1e-4)

    # user 4 again with one rating newer than their newest training one: their factors
    # updated with the trained ones as the prior; the older ones are not counted twice
    newer = mine + [(3, 1.0)]
    stamps = older + [max(older) + 1]
    x = np.hstack([[1.0], movies[3, 1:]])[None, :]
    y = np.array([1.0 - mean - movies[3, 0]])
    updated = np.linalg.solve(x.T @ x + reg, x.T @ y + reg @ prior[4])
    got = fitted(_features(4, 7, newer, stamps, mean)).numpy()[0]
    assert got == pytest.approx(rated(updated, 7), abs=1e-4)
    assert got < rated(prior[4], 7)  # a 1-star rating pulls them down


def test_without_history_features_a_user_gets_their_trained_factors(layer):
    """A model trained with history_len=0 has no history features to fold in."""
    fitted, _ = layer
    features = _features(4, 7)
    plain = {k: features[k] for k in (F.USER_ID_XF, F.MOVIE_ID_XF)}
    assert fitted(plain).numpy()[0] == pytest.approx(fitted(features).numpy()[0], abs=1e-5)


def test_fold_in_weights_older_ratings_less_with_a_half_life():
    u, m, r, t = _ratings()
    mean = float(r.mean())
    fitted = fz.FoldedFactorization(dim=3, l2=2.0, bias_l2=1.0, iterations=8, weight=0.5,
                                    half_life_days=500 / 86400, fold_l2=4.0)
    fitted.fit(u, m, t, r, num_users=31, num_movies=25, mean=mean)
    movies = fitted.movie_terms.numpy()[0, 1:].astype(np.float64)
    history, stamps, now = [(2, 5.0), (9, 1.0), (11, 4.0)], [1_000, 2_500, 2_900], 3_000
    features = _features(30, 7, history, stamps, mean)
    features[F.TIMESTAMP_XF] = tf.constant([[now]], tf.int64)
    w = 0.5 ** ((now - np.array(stamps)) / 500.0) + fz.RECENT_FLOOR
    x = np.hstack([np.ones((3, 1)), movies[[2, 9, 11], 1:]])
    y = np.array([h[1] for h in history]) - mean - movies[[2, 9, 11], 0]
    reg = np.diag([1.0, 4.0, 4.0, 4.0])
    folded = np.linalg.solve((x * w[:, None]).T @ x + reg, (x * w[:, None]).T @ y)
    want = mean + movies[7, 0] + folded[0] + folded[1:] @ movies[7, 1:]
    assert fitted(features).numpy()[0] == pytest.approx(want, abs=1e-4)


def test_an_unknown_user_starts_from_the_trained_users_distribution():
    """prior_scale: the fold-in of a user never seen shrinks towards the trained users'
    mean factors, by prior_scale * noise * their covariance^-1 (numpy here)."""
    u, m, r, t = _ratings()
    mean = float(r.mean())
    fitted = fz.FoldedFactorization(dim=3, l2=2.0, bias_l2=1.0, iterations=8, weight=0.5,
                                    prior_scale=0.5)
    fitted.fit(u, m, t, r, num_users=31, num_movies=25, mean=mean)
    terms = fitted.user_prior.numpy()[0].astype(np.float64)
    movies = fitted.movie_terms.numpy()[0, 1:].astype(np.float64)
    seen = terms[:30]  # user 30 has no training rating
    predicted = mean + movies[m, 0] + terms[u, 0] + np.sum(terms[u, 1:] * movies[m, 1:], 1)
    noise = np.mean((r - predicted) ** 2)
    reg = 0.5 * noise * np.linalg.inv(np.cov(seen.T))
    prior = seen.mean(axis=0)
    np.testing.assert_allclose(fitted.unknown_prior.numpy()[0], prior, atol=1e-5)

    def rated(x, movie):
        return mean + movies[movie, 0] + x[0] + x[1:] @ movies[movie, 1:]

    # no history (and no history features at all): exactly the population's mean user
    features = _features(30, 7, mean=mean)
    assert fitted(features).numpy()[0] == pytest.approx(rated(prior, 7), abs=1e-4)
    plain = {k: features[k] for k in (F.USER_ID_XF, F.MOVIE_ID_XF)}
    assert fitted(plain).numpy()[0] == pytest.approx(rated(prior, 7), abs=1e-4)
    history = [(2, 5.0), (9, 1.0), (11, 4.0)]
    x = np.hstack([np.ones((3, 1)), movies[[2, 9, 11], 1:]])
    y = np.array([h[1] for h in history]) - mean - movies[[2, 9, 11], 0]
    folded = np.linalg.solve(x.T @ x + reg, x.T @ y + reg @ prior)
    got = fitted(_features(30, 7, history, [5_000] * 3, mean)).numpy()[0]
    assert got == pytest.approx(rated(folded, 7), abs=1e-3)
    # a known user is untouched: their trained factors, no newer rating
    mine = [(int(mm), float(rr)) for uu, mm, rr in zip(u, m, r) if uu == 4]
    older = [int(tt) for uu, tt in zip(u, t) if uu == 4]
    got = fitted(_features(4, 7, mine, older, mean)).numpy()[0]
    assert got == pytest.approx(rated(terms[4], 7), abs=1e-4)


def test_the_sittings_residual_is_a_term_of_its_own():
    """session_tau: a design column exp(-age / tau), prior 0, shrunk by session_l2, its
    coefficient added to the rating; a low rating a minute ago pulls the next one down."""
    u, m, r, t = _ratings()
    mean = float(r.mean())
    fitted = fz.FoldedFactorization(dim=3, l2=2.0, bias_l2=1.0, iterations=8, weight=0.5,
                                    session_tau=300.0, session_l2=2.0)
    fitted.fit(u, m, t, r, num_users=31, num_movies=25, mean=mean)
    movies = fitted.movie_terms.numpy()[0, 1:].astype(np.float64)
    now = 10_000
    history, stamps = [(2, 5.0), (9, 4.0), (11, 1.0)], [2_000, 3_000, now - 60]
    features = _features(30, 7, history, stamps, mean)
    features[F.TIMESTAMP_XF] = tf.constant([[now]], tf.int64)
    g = np.exp(-(now - np.array(stamps)) / 300.0)
    x = np.hstack([np.ones((3, 1)), movies[[2, 9, 11], 1:], g[:, None]])
    y = np.array([h[1] for h in history]) - mean - movies[[2, 9, 11], 0]
    reg = np.diag([1.0, 2.0, 2.0, 2.0, 2.0])
    folded = np.linalg.solve(x.T @ x + reg, x.T @ y)
    want = mean + movies[7, 0] + folded[0] + folded[1:4] @ movies[7, 1:] + folded[4]
    got = fitted(features).numpy()[0]
    assert got == pytest.approx(want, abs=1e-4)
    assert folded[4] < 0  # the 1-star rating of a minute ago
    with pytest.raises(ValueError, match="session_l2"):
        fz.FoldedFactorization(dim=3, l2=2.0, bias_l2=1.0, iterations=8, weight=0.5,
                               session_tau=300.0)


def test_an_ensemble_rates_the_mean_of_its_members_each_fitted_from_its_own_start():
    """members: ALS fitted from seeds 0, 1, 2, each folding the user in on its own tables
    (every fold-in term on); the rating is the mean of three one-member layers' ratings."""
    u, m, r, t = _ratings()
    mean = float(r.mean())
    settings = dict(dim=3, l2=2.0, bias_l2=1.0, iterations=8, weight=0.5,
                    half_life_days=500 / 86400, fold_l2=4.0, prior_scale=0.5,
                    session_tau=300.0, session_l2=2.0)
    ensemble = fz.FoldedFactorization(members=3, **settings)
    ensemble.fit(u, m, t, r, num_users=31, num_movies=25, mean=mean)
    assert ensemble.movie_terms.shape == (3, 26, 4)
    single = fz.FoldedFactorization(**settings)  # refilled with each member's tables below
    single.fit(u, m, t, r, num_users=31, num_movies=25, mean=mean)
    # the members differ (their starts do), so their mean is not any one of them
    tables = [fz.fit_als(u, m, r, 31, 25, 3, 2.0, 1.0, 8, mean, seed=s) for s in range(3)]
    np.testing.assert_allclose(ensemble.movie_terms.numpy()[2, 1:, 1:],
                               tables[2]["movie_factors"], atol=1e-5)
    assert not np.allclose(tables[0]["movie_factors"], tables[1]["movie_factors"])

    mine = [(int(mm), float(rr)) for uu, mm, rr in zip(u, m, r) if uu == 4]
    older = [int(tt) for uu, tt in zip(u, t) if uu == 4]
    requests = [_features(4, 7, mine + [(3, 1.0)], older + [max(older) + 1], mean),
                _features(30, 7, [(2, 5.0), (9, 1.0), (11, 4.0)], [1_000, 2_500, 2_900],
                          mean),
                _features(30, 7, mean=mean)]
    for features in requests:
        features[F.TIMESTAMP_XF] = tf.constant([[3_000]], tf.int64)
        got = float(ensemble(features).numpy()[0])
        members = []
        for seed in range(3):  # member `seed` alone: a one-member layer of its tables
            single.user_prior.assign(ensemble.user_prior.numpy()[seed:seed + 1])
            single.movie_terms.assign(ensemble.movie_terms.numpy()[seed:seed + 1])
            single.unknown_prior.assign(ensemble.unknown_prior.numpy()[seed:seed + 1])
            single.unknown_regularizer.assign(
                ensemble.unknown_regularizer.numpy()[seed:seed + 1])
            members.append(float(single(features).numpy()[0]))
        assert got == pytest.approx(np.mean(members), abs=1e-4)
        assert np.ptp(members) > 1e-4
    with pytest.raises(ValueError, match="at least one member"):
        fz.FoldedFactorization(members=0, **settings)

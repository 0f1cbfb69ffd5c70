"""The residual neighbourhood that corrects the rating head after training."""

import numpy as np
import pytest
import tensorflow as tf

from trainer import neighborhood as N


def _ids(values):
    return tf.constant(np.asarray(values, dtype=np.int64))


def test_similar_movies_are_the_positively_correlated_ones():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(200), 3)
    movies = np.tile([0, 1, 2], 200)
    taste = rng.choice([-1.5, 1.5], size=200)
    # movie 1 is liked by whoever likes movie 0; movie 2 by whoever dislikes it
    ratings = 3.0 + np.stack([taste, taste, -taste], axis=1).reshape(-1)
    ids, sims = N.similar_movies(users, movies, ratings, num_movies=4, k=2)
    assert ids[0].tolist() == [1, -1] and ids[1].tolist() == [0, -1]
    assert ids[2].tolist() == [-1, -1]  # only negative correlations: no neighbours
    # 200 common raters, shrunk by SIMILARITY_SHRINK
    assert sims[0, 0] == pytest.approx(200 / (200 + N.SIMILARITY_SHRINK), rel=1e-4)
    assert ids[3].tolist() == [-1, -1] and not sims[3].any()  # never rated


def _layer(knn_weight=1.0, session_weight=1.0, tau=100.0):
    # user 1 rated movies 10, 11, 12 at t = 100, 200, 300 and movie 13 at t = 10000;
    # user 2 rated movie 10. Residuals: what the model got wrong on each rating.
    users, movies = [1, 1, 1, 1, 2], [10, 11, 12, 13, 10]
    times, residuals = [100.0, 200.0, 300.0, 1e4, 150.0], [0.5, -1.0, 2.0, 1.0, 3.0]
    neighbors = np.full((20, 2), -1)
    similarities = np.zeros((20, 2), dtype=np.float32)
    neighbors[5] = [11, 12]  # movie 5 is like movies 11 (0.5) and 12 (0.2)
    similarities[5] = [0.5, 0.2]
    layer = N.ResidualNeighborhood(knn_weight, session_weight, tau)
    layer.set_tables(users, movies, times, residuals, neighbors, similarities)
    return layer


def test_knn_term_averages_the_users_errors_on_similar_movies():
    layer = _layer()
    knn = layer.knn(_ids([1, 2, 3, 1]), _ids([5, 5, 5, 99])).numpy()
    expected = (0.5 * -1.0 + 0.2 * 2.0) / (0.7 + N.KNN_SHRINK)
    np.testing.assert_allclose(knn, [expected, 0.0, 0.0, 0.0], atol=1e-6)
    # user 2 rated neither neighbour; user 3 nothing; movie 99 is outside the table


def test_session_term_reads_only_earlier_ratings_of_other_movies_by_the_same_user():
    layer = _layer()

    def session(user, movie, time):
        return float(layer.session(_ids([user]), _ids([movie]),
                                   tf.constant([time], tf.float32))[0])

    w = np.exp(-np.array([50.0, 150.0]) / 100.0)  # movies 11 and 10, before t = 250
    assert session(1, 5, 250.0) == pytest.approx(
        (w @ [-1.0, 0.5]) / (w.sum() + N.SESSION_SHRINK), rel=1e-5)
    # at t = 300 asking about movie 12 itself: its own error never counts
    w = np.exp(-np.array([100.0, 200.0]) / 100.0)
    assert session(1, 12, 300.0) == pytest.approx(
        (w @ [-1.0, 0.5]) / (w.sum() + N.SESSION_SHRINK), rel=1e-5)
    assert session(1, 5, 50.0) == 0.0  # nothing earlier
    assert session(2, 10, 150.0) == 0.0  # the only earlier rating is of the asked movie
    assert session(3, 5, 250.0) == 0.0  # another user's ratings never count


def test_correction_is_the_weighted_sum_of_both_terms():
    from trainer import features as F

    features = {F.USER_ID_XF: _ids([1]), F.MOVIE_ID_XF: _ids([5]),
                F.TIMESTAMP_S_XF: tf.constant([250.0])}
    both = float(_layer(0.5, 2.0)(features)[0])
    knn = float(_layer(1.0, 0.0)(features)[0])
    session = float(_layer(0.0, 1.0)(features)[0])
    assert both == pytest.approx(0.5 * knn + 2.0 * session, rel=1e-5)
    assert knn != 0.0 and session != 0.0
    no_time = {k: v for k, v in features.items() if k != F.TIMESTAMP_S_XF}
    every = float(_layer(1.0, 0.0)(no_time)[0])  # no time: every training rating counts
    assert float(_layer(0.5, 2.0)(no_time)[0]) == pytest.approx(0.5 * every, rel=1e-5)
    # the kNN term reads only ratings before the example's time: far in the future, all
    late = dict(features, **{F.TIMESTAMP_S_XF: tf.constant([1e9])})
    assert float(_layer(1.0, 0.0)(late)[0]) == pytest.approx(every, rel=1e-5)
    assert knn != pytest.approx(every)  # at t = 250 a later rating was left out


def test_empty_training_data_gives_no_correction():
    layer = N.ResidualNeighborhood(1.0, 1.0, 60.0)
    layer.set_tables([], [], [], [], np.full((3, 2), -1), np.zeros((3, 2), np.float32))
    np.testing.assert_allclose(layer.knn(_ids([0]), _ids([1])), [0.0])
    np.testing.assert_allclose(
        layer.session(_ids([0]), _ids([1]), tf.constant([5.0])), [0.0])


def test_an_unfitted_neighbourhood_corrects_nothing_and_fits_once():
    from trainer import features as F

    users, movies = [1, 1, 1, 1, 2], [10, 11, 12, 13, 10]
    times, residuals = [100.0, 200.0, 300.0, 1e4, 150.0], [0.5, -1.0, 2.0, 1.0, 3.0]
    ratings = [4.0, 2.0, 5.0, 3.0, 1.0]
    features = {F.USER_ID_XF: _ids([1, 1, 2]), F.MOVIE_ID_XF: _ids([11, 12, 11]),
                F.TIMESTAMP_S_XF: tf.constant([250.0, 400.0, 9e3])}
    layer = N.ResidualNeighborhood(1.0, 0.5, 100.0, neighbors=2)
    assert not layer.fitted and not layer.variables
    np.testing.assert_array_equal(layer(features), [0.0, 0.0, 0.0])
    layer.fit(users, movies, times, ratings, residuals, num_movies=20)
    assert layer.fitted and layer.seconds >= 0
    same = N.ResidualNeighborhood(1.0, 0.5, 100.0)
    same.set_tables(users, movies, times, residuals,
                    *N.similar_movies(users, movies, ratings, 20, 2))
    np.testing.assert_array_equal(layer(features), same(features))
    with pytest.raises(ValueError, match="fitted already"):
        layer.fit(users, movies, times, ratings, residuals, num_movies=20)


def test_the_rating_model_owns_its_neighbourhood_and_applies_it_outside_training():
    from conftest import SMALL_HPARAMS
    from test_model import _batch, _vocab

    from trainer import features as F
    from trainer.model import HParams, MovieRecModel

    assert MovieRecModel(_vocab(), HParams(residual_knn_weight=0.0, residual_session_weight=0.0,
                                           **SMALL_HPARAMS)).rating_model.neighborhood is None
    batch = _batch(n=8)
    model = MovieRecModel(_vocab(), HParams(**{**SMALL_HPARAMS, "dropout": 0.0}))
    layer = model.rating_model.neighborhood
    assert isinstance(layer, N.ResidualNeighborhood) and not layer.fitted
    q, c, before = model(batch)
    np.testing.assert_array_equal(before, model.rating_model.factor_rating(batch, q, c))
    # the log: the batch's ratings, and the first user's rating of a movie like the first
    neighbour = (int(batch[F.MOVIE_ID_XF][0]) + 1) % 19
    users = np.append(batch[F.USER_ID_XF].numpy(), batch[F.USER_ID_XF][0])
    movies = np.append(batch[F.MOVIE_ID_XF].numpy(), neighbour)
    times = np.append(batch[F.TIMESTAMP_S_XF].numpy(), 0.0)
    similar = np.full((20, 2), -1)
    similar[movies[0]] = [neighbour, -1]
    layer.set_tables(users, movies, times, np.full(len(users), 2.0), similar,
                     np.where(similar >= 0, 0.5, 0.0).astype(np.float32))
    _, _, after = model(batch)
    corrected = layer(batch).numpy()
    assert corrected[0] != 0.0
    np.testing.assert_allclose(after, before.numpy() + corrected, rtol=1e-6)
    # training never sees it
    _, _, trained = model(batch, training=True)
    np.testing.assert_allclose(trained, before, rtol=1e-6)


def test_the_export_carries_the_neighbourhood(trained_model):
    from trainer import saved_model

    loaded = saved_model.load(str(trained_model[0]))
    names = {v.name.split("/")[-1].split(":")[0]
             for v in loaded.residual_neighborhood.variables}
    assert {"pair_keys", "pair_residuals", "time_residuals", "neighbors"} <= names
    assert loaded.rating_model.neighborhood.variables  # the rating model's own layer
    assert np.abs(loaded.residual_neighborhood._pair_residuals.numpy()).max() > 0

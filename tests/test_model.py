"""The multitask model and its export, trained on tiny data without TFX."""

import numpy as np
import pytest
import tensorflow as tf

from components.movielens_example_gen import executor
from trainer import saved_model
from trainer import export, saved_model
from trainer import features as F
from trainer.model import HParams, MovieRecModel, Vocab

from conftest import SMALL_HPARAMS as SMALL  # noqa: E402


def _vocab():
    sizes = {key: 20 for key in F.VOCABS}
    sizes.update({F.TIMESTAMP_BUCKET_XF: 11, F.YEAR_BUCKET_XF: 22, F.AGE_BUCKET_XF: 8})
    return Vocab(sizes)


def _batch(n=64, seed=0):
    rng = np.random.default_rng(seed)
    batch = {key: rng.integers(0, 19, size=n) for key in
             (F.USER_ID_XF, F.MOVIE_ID_XF, F.GENDER_XF, F.OCCUPATION_XF, F.ZIP_PREFIX_XF)}
    batch[F.TIMESTAMP_BUCKET_XF] = rng.integers(0, 10, size=n)
    batch[F.YEAR_BUCKET_XF] = rng.integers(0, 21, size=n)
    batch[F.AGE_BUCKET_XF] = rng.integers(0, 8, size=n)
    batch[F.TIMESTAMP_Z_XF] = rng.normal(size=n).astype(np.float32)
    batch[F.TIMESTAMP_S_XF] = rng.uniform(0, 86400 * 30, size=n).astype(np.float32)
    batch[F.TIMESTAMP_XF] = 880_000_000 + batch[F.TIMESTAMP_S_XF].astype(np.int64)
    batch[F.TITLE_TOKENS_XF] = rng.integers(0, 19, size=(n, F.TITLE_TOKENS_LEN))
    batch[F.GENRES_XF] = rng.integers(0, 19, size=(n, F.GENRES_LEN))
    batch[F.RATING_XF] = rng.integers(1, 6, size=n).astype(np.float32)
    return {k: tf.constant(v) for k, v in batch.items()}


@pytest.mark.parametrize("rating_tower", ["shared", "separate"])
def test_loss_on_a_batch_is_finite_and_training_lowers_it(rating_tower):
    hp = HParams(rating_tower=rating_tower, **SMALL)
    log_prob = np.log(np.full(20, 1 / 20))
    model = MovieRecModel(_vocab(), hp, movie_log_prob=log_prob, mean_rating=3.0)
    batch = _batch()
    before = float(model.compute_loss(batch, training=False))
    assert np.isfinite(before) and before > 0
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
    ds = tf.data.Dataset.from_tensors(batch).repeat(40)
    model.fit(ds, epochs=1, verbose=0)
    assert float(model.compute_loss(batch, training=False)) < before


def test_loss_weights_select_the_tasks():
    batch = _batch()
    only_rating = MovieRecModel(_vocab(), HParams(retrieval_weight=0.0, **SMALL))
    q, c, rating = only_rating(batch)
    mse = float(tf.reduce_mean((rating - batch[F.RATING_XF]) ** 2))
    assert float(only_rating.compute_loss(batch)) == pytest.approx(mse, rel=1e-4)


def test_hparams_from_dict_validates():
    hp = HParams.from_dict({"query_layers": "64,32", "epochs": 2})
    assert hp.query_layers == (64, 32) and hp.epochs == 2
    with pytest.raises(ValueError, match="unknown hyperparameters: nope"):
        HParams.from_dict({"nope": 1})
    with pytest.raises(ValueError, match="rating_tower"):
        HParams.from_dict({"rating_tower": "other"})


@pytest.fixture(scope="module")
def exported(trained_model):
    path, summary = trained_model
    return tf.saved_model.load(str(path)), summary


def test_training_summary(exported, synth_data):
    _, summary = exported
    assert summary["catalog_size"] == len(synth_data.movies)
    assert len(summary["history"]["loss"]) == SMALL["epochs"]


def test_recommend_returns_top_10_catalog_movies(exported, synth_data):
    model, _ = exported
    out = saved_model.call(model, "recommend", user_id=tf.constant(["1", "2"]))
    ids = out["movie_ids"].numpy()
    assert ids.shape == (2, export.DEFAULT_K)
    catalog = {m.movie_id.encode() for m in synth_data.movies}
    assert set(ids.ravel()) <= catalog
    assert all(len(set(row)) == export.DEFAULT_K for row in ids)  # no duplicates
    scores = out["scores"].numpy()
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    titles = {m.movie_id.encode(): m.title.encode() for m in synth_data.movies}
    assert [titles[i] for i in ids[0]] == list(out["movie_titles"].numpy()[0])
    assert out["known_user"].numpy().all()


def test_unknown_users_get_the_models_answer_for_a_new_user(exported, synth_data):
    """A user never seen, with no history or demographics, is answered by the model from
    the out-of-vocabulary user (trained on user_dropout of the examples) and the time:
    ten distinct catalog movies, known_user False, not user 1's list."""
    model, _ = exported
    out = saved_model.call(model, "recommend", user_id=tf.constant(["nobody", "1"]))
    assert out["known_user"].numpy().tolist() == [False, True]
    ids = out["movie_ids"].numpy()
    catalog = {m.movie_id.encode() for m in synth_data.movies}
    assert set(ids[0]) <= catalog and len(set(ids[0])) == export.DEFAULT_K
    assert list(ids[0]) != list(ids[1])


def test_recommend_at_honours_k_and_timestamp(exported):
    model, _ = exported
    out = saved_model.call(model, "recommend_at", user_id=tf.constant(["1", "1"]), timestamp=tf.constant([880000000, 0], tf.int64),
        k=tf.constant([3, 3], tf.int64))
    assert out["movie_ids"].shape == (2, 3)
    big = saved_model.call(model, "recommend_at", user_id=tf.constant(["1"]), timestamp=tf.constant([0], tf.int64),
        k=tf.constant([10_000], tf.int64))
    assert big["movie_ids"].shape[1] <= export.MAX_K


def test_serving_default_rates_raw_examples(exported, example_files):
    model, _ = exported
    serialized = [r.numpy() for r in tf.data.TFRecordDataset(
        example_files["eval"], compression_type="GZIP").take(50)]
    rating = model.signatures["serving_default"](examples=tf.constant(serialized))["rating"]
    assert rating.shape == (50,)
    assert np.all((rating.numpy() > 0) & (rating.numpy() < 6.5))


def test_rate_looks_up_user_and_movie(exported):
    model, _ = exported
    out = saved_model.call(model, "rate", user_id=tf.constant(["1", "1"]),
                                   movie_id=tf.constant(["1", "no-such-movie"]),
                                   timestamp=tf.constant([0, 0], tf.int64))
    assert out["known_movie"].numpy().tolist() == [True, False]
    assert np.all(np.isfinite(out["rating"].numpy()))


def test_rate_at_a_ratings_time_is_serving_default_on_its_example(exported, example_files):
    """`rate` looks the user's and the movie's features up in the model; at a rating's own
    timestamp it answers what serving_default answers for that rating's full example."""
    model, _ = exported
    serialized = [r.numpy() for r in tf.data.TFRecordDataset(
        example_files["eval"], compression_type="GZIP").take(64)]
    features = [tf.train.Example.FromString(x).features.feature for x in serialized]
    users = [f["user_id"].bytes_list.value[0] for f in features]
    movies = [f["movie_id"].bytes_list.value[0] for f in features]
    stamps = [f["timestamp"].int64_list.value[0] for f in features]
    rated = saved_model.call(model, "rate", user_id=tf.constant(users), movie_id=tf.constant(movies),
                                     timestamp=tf.constant(stamps, tf.int64))["rating"]
    full = model.signatures["serving_default"](examples=tf.constant(serialized))["rating"]
    np.testing.assert_allclose(rated.numpy(), full.numpy(), rtol=1e-5, atol=1e-5)
    at_now = saved_model.call(model, "rate", user_id=tf.constant(users), movie_id=tf.constant(movies),
                                      timestamp=tf.zeros([len(users)], tf.int64))["rating"]
    assert not np.allclose(at_now.numpy(), rated.numpy())  # the time is not ignored


def test_catalog_examples_round_trip():
    from components.movielens_example_gen import movielens

    movie = movielens.Movie("7", "Some Film (1990)", ("Drama", "War"), 1990)
    parsed = tf.io.parse_single_example(
        executor.catalog_example(movie),
        F.raw_feature_spec(F.MOVIE_FEATURES))
    assert parsed[F.MOVIE_ID].numpy()[0] == b"7"
    assert list(tf.sparse.to_dense(parsed[F.MOVIE_GENRES]).numpy()) == [b"Drama", b"War"]


def test_user_history_keeps_the_most_recent_movies_per_user():
    from trainer.model import user_history

    users = np.array([0, 0, 0, 2, 2])
    movies = np.array([5, 6, 7, 1, 3])
    times = np.array([1.0, 3.0, 2.0, 0.0, 1.0])
    ratings = np.array([5.0, 4.0, 3.0, 2.0, 1.0])  # mean 3
    table, when, centred = user_history(users, movies, times, ratings, num_users=4, length=2)
    assert table.tolist() == [[7, 8], [0, 0], [4, 2], [0, 0]]  # movie + 1, newest first
    assert when.tolist() == [[3.0, 2.0], [0, 0], [1.0, 0.0], [0, 0]]
    assert centred.tolist() == [[1.0, 0.0], [0, 0], [-2.0, -1.0], [0, 0]]


def test_a_training_example_never_sees_its_own_movie_in_the_history():
    from trainer.model import query_tower, user_history

    hp = HParams(history_len=4, **SMALL)
    vocab = _vocab()
    history = user_history(np.array([3, 3]), np.array([5, 9]), np.array([1, 2]),
                           np.array([1.0, 5.0]), vocab.sizes[F.USER_ID_XF], hp.history_len)
    tower = query_tower(vocab, hp)
    batch = _batch(n=1)
    batch[F.USER_ID_XF] = tf.constant([3])
    batch[F.HISTORY_IDS_XF] = tf.constant(history[0][[3]])
    batch[F.HISTORY_TIMES_XF] = tf.constant(history[1][[3]])
    batch[F.HISTORY_RATINGS_XF] = tf.constant(history[2][[3]])
    with_target = dict(batch, **{F.MOVIE_ID_XF: tf.constant([9])})
    other_target = dict(batch, **{F.MOVIE_ID_XF: tf.constant([11])})
    without_movie = {k: v for k, v in batch.items() if k != F.MOVIE_ID_XF}
    # the user's history is {5, 9}: asking about 9 hides 9, asking about 11 hides nothing
    assert not np.allclose(tower(with_target), tower(other_target))
    np.testing.assert_allclose(tower(other_target), tower(without_movie), rtol=1e-6)


def test_a_rating_never_sees_its_own_user_among_the_movies_raters():
    from trainer.model import candidate_tower, user_history

    hp = HParams(rater_history_len=4, **SMALL)
    vocab = _vocab()
    # movie 7 was rated by users 2 and 4 (movies and users swapped: raters per movie)
    raters = user_history(np.array([7, 7]), np.array([2, 4]), np.array([1.0, 2.0]),
                          np.array([1.0, 5.0]), vocab.sizes[F.MOVIE_ID_XF], 4)
    tower = candidate_tower(vocab, hp, raters=raters)
    batch = dict(_batch(n=1), **{F.MOVIE_ID_XF: tf.constant([7])})
    asked_by_4 = dict(batch, **{F.USER_ID_XF: tf.constant([4])})
    asked_by_9 = dict(batch, **{F.USER_ID_XF: tf.constant([9])})
    no_user = {k: v for k, v in batch.items() if k != F.USER_ID_XF}
    assert not np.allclose(tower(asked_by_4), tower(asked_by_9))
    np.testing.assert_allclose(tower(asked_by_9), tower(no_user), rtol=1e-6)


def test_large_training_sets_get_fewer_epochs_never_less_than_one():
    hp = HParams(epochs=6, example_budget=2_500_000)
    assert hp.epochs_for(80_000) == 6  # ML-100K: the tuned 6 epochs
    assert hp.epochs_for(800_000) == 3
    assert hp.epochs_for(8_000_000) == 1
    assert HParams(epochs=6, example_budget=0).epochs_for(8_000_000) == 6
    assert HParams(epochs=0).epochs_for(8_000_000) == 0  # build and export only


def test_retrieval_metrics_agree_with_what_recommend_serves(exported, example_files):
    from trainer import evaluation

    model, _ = exported
    batches = list(evaluation.serialized_batches(example_files["eval"], batch_size=256))
    train_rated = evaluation.rated_movies(
        evaluation.serialized_batches(example_files["train"]))
    metrics = evaluation.evaluate(model, batches, train_rated=train_rated)
    # the seeds' top-K accuracy, recomputed from `recommend_at`'s own top 10
    spec = F.raw_feature_spec((F.QUERY_FEATURES[0], F.QUERY_FEATURES[1], F.MOVIE_FEATURES[0]))
    hits = total = 0
    for batch in batches:
        parsed = {k: v.numpy().reshape(-1) for k, v in tf.io.parse_example(batch, spec).items()}
        top = saved_model.call(model, "recommend_at", user_id=tf.constant(parsed[F.USER_ID]),
            timestamp=tf.constant(parsed[F.TIMESTAMP]),
            k=tf.fill([len(parsed[F.USER_ID])], tf.constant(10, tf.int64)))["movie_ids"]
        hits += int((top.numpy() == parsed[F.MOVIE_ID][:, None]).any(axis=1).sum())
        total += len(parsed[F.USER_ID])
    assert metrics["top_10_accuracy"] == pytest.approx(hits / total, abs=2 / total)
    assert metrics["retrieval_examples"] == total
    for k in (1, 5, 10, 50, 100):  # removing movies that cannot be right only helps
        assert metrics[f"filtered_top_{k}_accuracy"] >= metrics[f"top_{k}_accuracy"]
    for name in ("recall_at_10", "ndcg_at_10", "mrr", "filtered_recall_at_100"):
        assert 0.0 < metrics[name] <= 1.0
    assert 0.0 < metrics["rmse"] < 2.0


def test_scann_index_exports_and_agrees_with_brute_force(exported, tmp_path, example_files,
                                                         transform_dir):
    """`--index scann`: the exported model loads (ScaNN's ops registered by saved_model.load)
    and recommends nearly what the exact index does."""
    from conftest import SMALL_HPARAMS
    from trainer.run import train_and_export

    train_and_export([example_files["train"]], [example_files["catalog"]], transform_dir,
                     str(tmp_path / "scann"), HParams(index="scann", **SMALL_HPARAMS))
    scann_model = saved_model.load(str(tmp_path / "scann"))
    exact, _ = exported
    users = tf.constant([str(u) for u in range(1, 21)])
    a = saved_model.call(scann_model, "recommend", user_id=users)["movie_ids"].numpy()
    b = saved_model.call(exact, "recommend", user_id=users)["movie_ids"].numpy()
    overlap = np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b)])
    assert overlap >= 0.9  # same seed, same weights; only the index differs
    # an anonymous request (no known user, history or demographics) in a batch with known
    # users: both indexes answer it with the same popularity near its time
    asked = tf.constant(["nobody", "1"])
    when = {"timestamp": tf.constant([0, 0], tf.int64), "k": tf.constant([10, 10], tf.int64)}
    a = saved_model.call(scann_model, "recommend_at", user_id=asked, **when)
    b = saved_model.call(exact, "recommend_at", user_id=asked, **when)
    np.testing.assert_allclose(a["scores"].numpy()[0], b["scores"].numpy()[0], rtol=1e-6)
    popular = saved_model.call(exact, "score_catalog", user_id=asked[:1],
                               timestamp=when["timestamp"][:1])["scores"].numpy()[0]
    np.testing.assert_allclose(a["scores"].numpy()[0], np.sort(popular)[::-1][:10], rtol=1e-6)


def test_early_stopping_keeps_the_best_validation_epoch(example_files, transform_dir):
    """With a validation split carved out of train, training ends on the weights of the
    epoch with the best validation objective (RMSE + retrieval loss per example), wherever
    training stopped."""
    import tensorflow_transform as tft

    from trainer import data, fit

    hp = HParams.from_dict({**SMALL, "epochs": 8, "learning_rate": 0.05,
                            "validation_fraction": 0.2, "early_stopping_patience": 1})
    tft_output = tft.TFTransformOutput(transform_dir)
    ratings, _ = data.load_ratings(data.tfrecord_files(example_files["train"]),
                                   tft_output.transform_features_layer())
    train, validation = data.split_validation(ratings, hp.validation_fraction, hp.seed)
    vocab = Vocab.from_tft_output(tft_output)
    model, _, history = fit.fit(train, vocab, hp, validation)
    objective = history[fit.VAL_OBJECTIVE]
    assert 1 <= len(objective) <= 8
    _, validation = fit.with_causal_history(train, validation, hp)  # as fit() saw it
    final = model.evaluate(data.training_dataset(validation, hp, shuffle=False),
                           return_dict=True, verbose=0)
    # the Keras metrics average over batches as the epoch-end validation did
    np.testing.assert_allclose(final["rmse"] + final["retrieval_loss"] / hp.batch_size,
                               min(objective), rtol=1e-4)
    with pytest.raises(ValueError, match="validation_fraction"):
        HParams.from_dict({"early_stopping_patience": 2})

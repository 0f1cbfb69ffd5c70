"""The multitask model and its export, trained on tiny data without TFX."""

import numpy as np
import pytest
import tensorflow as tf

from components.movielens_example_gen import executor
from trainer import export
from trainer import features as F
from trainer.model import HParams, MovieRecModel, Vocab

SMALL = dict(epochs=3, batch_size=128, embedding_dim=16, side_embedding_dim=4)


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
def exported(tmp_path_factory, example_files, transform_dir):
    from trainer.run import train_and_export

    out = tmp_path_factory.mktemp("export")
    summary = train_and_export([example_files["train"]], [example_files["catalog"]],
                               transform_dir, str(out / "model"), HParams(**SMALL),
                               log_dir=str(out / "logs"))
    return tf.saved_model.load(str(out / "model")), summary


def test_training_summary(exported, synth_data):
    _, summary = exported
    assert summary["catalog_size"] == len(synth_data.movies)
    assert len(summary["history"]["loss"]) == SMALL["epochs"]


def test_recommend_returns_top_10_catalog_movies(exported, synth_data):
    model, _ = exported
    out = model.signatures["recommend"](user_id=tf.constant(["1", "2"]))
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


def test_unknown_users_get_the_popular_movies(exported, synth_data):
    model, _ = exported
    out = model.signatures["recommend"](user_id=tf.constant(["nobody", "1"]))
    assert not out["known_user"].numpy()[0]
    counts = np.bincount(synth_data.ratings["movie"], minlength=len(synth_data.movies))
    most_popular = synth_data.movies[int(np.argmax(counts))].movie_id.encode()
    # the popularity list is built from the train split only, so the top may differ a
    # little from all ratings, but the most rated movie overall is in the top 10
    assert most_popular in out["movie_ids"].numpy()[0]


def test_recommend_at_honours_k_and_timestamp(exported):
    model, _ = exported
    out = model.signatures["recommend_at"](
        user_id=tf.constant(["1", "1"]), timestamp=tf.constant([880000000, 0], tf.int64),
        k=tf.constant([3, 3], tf.int64))
    assert out["movie_ids"].shape == (2, 3)
    big = model.signatures["recommend_at"](
        user_id=tf.constant(["1"]), timestamp=tf.constant([0], tf.int64),
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
    out = model.signatures["rate"](user_id=tf.constant(["1", "1"]),
                                   movie_id=tf.constant(["1", "no-such-movie"]))
    assert out["known_movie"].numpy().tolist() == [True, False]
    assert np.all(np.isfinite(out["rating"].numpy()))


def test_catalog_examples_round_trip():
    from components.movielens_example_gen import movielens

    movie = movielens.Movie("7", "Some Film (1990)", ("Drama", "War"), 1990)
    parsed = tf.io.parse_single_example(
        executor.catalog_example(movie).SerializeToString(),
        F.raw_feature_spec(F.MOVIE_FEATURES))
    assert parsed[F.MOVIE_ID].numpy()[0] == b"7"
    assert list(tf.sparse.to_dense(parsed[F.MOVIE_GENRES]).numpy()) == [b"Drama", b"War"]

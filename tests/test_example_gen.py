"""MovieLensExampleGen's executor on tiny data of each layout, through real Beam."""

import json

import numpy as np
import pytest
import tensorflow as tf
from tfx.types import standard_artifacts

from components.movielens_example_gen import executor, movielens, splits, synth
from trainer import features as F


def _run(data_dir, tmp_path, split="random", seed=42, name="out"):
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / name)
    executor.Executor().Do({}, {"examples": [examples]}, {
        "data_dir": str(data_dir), "layout": movielens.detect_layout(data_dir),
        "split": split, "seed": seed, "eval_fraction": 0.2, "input_fingerprint": "x"})
    return examples


def _read(examples, split, features=F.RATING_EXAMPLE_FEATURES):
    files = tf.io.gfile.glob(f"{examples.uri}/Split-{split}/*")
    spec = F.raw_feature_spec(features)
    return [tf.io.parse_single_example(r, spec)
            for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def test_random_split_is_seeded_joined_and_complete(tmp_path, ml100k_dir, synth_data):
    examples = _run(ml100k_dir, tmp_path)
    counts = json.loads(examples.get_string_custom_property("split_counts"))
    n = len(synth_data.ratings)
    assert counts["train"] + counts["eval"] == n
    assert 0.15 < counts["eval"] / n < 0.25
    assert counts["catalog"] == len(synth_data.movies)
    assert examples.get_string_custom_property("layout") == "ml-100k"
    again = _run(ml100k_dir, tmp_path, name="again")
    assert json.loads(again.get_string_custom_property("split_counts")) == counts
    other_seed = _run(ml100k_dir, tmp_path, seed=7, name="seed7")
    eval_a = {(e[F.USER_ID].numpy()[0], e[F.MOVIE_ID].numpy()[0])
              for e in _read(examples, "eval")}
    eval_b = {(e[F.USER_ID].numpy()[0], e[F.MOVIE_ID].numpy()[0])
              for e in _read(other_seed, "eval")}
    assert eval_a != eval_b
    # the request context is a time split's: no example of a random split carries one
    for split in ("train", "eval"):
        assert all(e[F.HISTORY_MOVIE_IDS].values.shape[0] == 0
                   for e in _read(examples, split, F.HISTORY_FEATURES))
    # joined: every example carries its movie's title and its user's occupation
    users = {u.user_id: u for u in synth_data.users}
    movies = {m.movie_id: m for m in synth_data.movies}
    for e in _read(examples, "train")[:50]:
        uid, mid = e[F.USER_ID].numpy()[0].decode(), e[F.MOVIE_ID].numpy()[0].decode()
        assert e[F.MOVIE_TITLE].numpy()[0].decode() == movies[mid].title
        assert e[F.USER_OCCUPATION].numpy()[0].decode() == users[uid].occupation
        assert set(g.decode() for g in e[F.MOVIE_GENRES].values.numpy()) == set(
            movies[mid].genres)


def test_time_split_holds_out_the_newest(tmp_path, ml100k_dir):
    examples = _run(ml100k_dir, tmp_path, split="time")
    train = [int(e[F.TIMESTAMP].numpy()[0]) for e in _read(examples, "train")]
    evals = [int(e[F.TIMESTAMP].numpy()[0]) for e in _read(examples, "eval")]
    assert max(train) <= min(evals)
    assert 0.15 < len(evals) / (len(train) + len(evals)) < 0.25


def test_time_split_context_keeps_the_latest_ratings_before_each_eval_rating():
    """with_context: strictly before (an equal time is not before), the `length` latest,
    oldest first, ties by movie id; a rating with nothing before it gets empty lists."""
    from trainer import examples as ex

    known = [(30, "9", 4.0), (10, "1", 5.0), (20, "3", 2.0), (20, "2", 3.0), (40, "7", 1.0)]
    entries = {t: ex.entries({F.USER_ID: "u", F.TIMESTAMP: t}) for t in (10, 20, 40)}
    out = list(executor.with_context(
        ("u", {executor.KNOWN: known, executor.EVAL: [(t, e) for t, e in entries.items()]}),
        length=2))
    spec = F.raw_feature_spec(F.HISTORY_FEATURES + F.QUERY_FEATURES[:2])
    parsed = {int(p[F.TIMESTAMP].numpy()[0]): p for p in
              (tf.io.parse_single_example(o, spec) for o in out)}
    ids = {t: [m.decode() for m in p[F.HISTORY_MOVIE_IDS].values.numpy()]
           for t, p in parsed.items()}
    assert ids == {10: [], 20: ["1"], 40: ["3", "9"]}
    assert parsed[40][F.HISTORY_RATINGS].values.numpy().tolist() == [2.0, 4.0]
    assert parsed[40][F.HISTORY_TIMESTAMPS].values.numpy().tolist() == [20, 30]


def test_fold_split_reads_base_and_test_files(tmp_path, synth_data):
    data = synth.write_ml100k(tmp_path / "folds", synth_data)
    lines = (data / "u.data").read_text().splitlines()
    (data / "u1.base").write_text("\n".join(lines[:2000]) + "\n")
    (data / "u1.test").write_text("\n".join(lines[2000:]) + "\n")
    examples = _run(data, tmp_path, split="fold:u1")
    counts = json.loads(examples.get_string_custom_property("split_counts"))
    assert (counts["train"], counts["eval"]) == (2000, len(lines) - 2000)


def test_ml_latest_layout_has_empty_user_features_and_half_stars(tmp_path):
    data = synth.generate(users=30, movies=40, ratings=800, seed=3, half_stars=True)
    directory = synth.write_ml_latest(tmp_path / "latest", data)
    examples = _run(directory, tmp_path)
    rows = _read(examples, "train")
    assert {e[F.USER_OCCUPATION].numpy()[0] for e in rows} == {b""}
    ratings = np.array([e[F.RATING].numpy()[0] for e in rows])
    assert set(np.unique(ratings * 2) % 1) == {0.0} and ratings.min() >= 0.5
    catalog = _read(examples, "catalog", F.MOVIE_FEATURES)
    assert len(catalog) == 40


def test_ratings_of_movies_missing_from_the_catalog_fail_clearly(tmp_path, synth_data):
    data = synth.write_ml100k(tmp_path / "orphan", synth_data)
    with open(data / "u.data", "a") as f:
        f.write("1\t99999\t4\t880000000\n")
    with pytest.raises(movielens.DataError, match="movie '99999'.*not in u.item"):
        _run(data, tmp_path)


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="fold:NAME"):
        splits.ratings_sources("sometimes")


def _protobuf_example(values: dict) -> tf.train.Example:
    """The reference: the same raw features built with protobuf's own classes."""
    feature = {}
    for name, value in values.items():
        spec = next(f for f in F.RATING_EXAMPLE_FEATURES if f.name == name)
        value = list(value) if isinstance(value, (list, tuple)) else [value]
        if spec.dtype == tf.string:
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[v.encode("utf-8") for v in value]))
        elif spec.dtype.is_integer:
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=value))
        else:
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=value))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def test_fast_encoder_writes_the_same_examples_as_protobuf(ml100k_dir):
    """The wire-format example builder (trainer/examples.py, through the executor's
    ExampleEncoder, which reuses each movie's and user's serialized entries): every example
    must parse to exactly the protobuf-built one (user or no user, unicode titles, half
    stars, many genres, no genre, negative and large numbers)."""
    movies = movielens.read_movies(str(ml100k_dir), "ml-100k")
    users = movielens.read_users(str(ml100k_dir), "ml-100k")
    ratings = list(movielens.iter_ratings(str(ml100k_dir), "ml-100k"))[:300]
    some_users = sorted(users)
    movies["x"] = movielens.Movie("x", "Amélie (2001) — 東京", (), 0)
    movies["y"] = movielens.Movie("y", "", tuple(f"g{i}" for i in range(30)), -5)
    encoder = executor.ExampleEncoder(movies, users)
    ratings += [movielens.Rating(some_users[0], "x", 4.5, 2**40),
                movielens.Rating("no-such-user", "y", 0.5, 0),
                movielens.Rating(some_users[1], "y", 5.0, -1)]
    for rating in ratings:
        expected = _protobuf_example({
            F.USER_ID: rating.user_id, F.TIMESTAMP: rating.timestamp,
            F.RATING: rating.rating,
            **executor.movie_values(movies[rating.movie_id]),
            **executor.user_values(users.get(rating.user_id))})
        assert tf.train.Example.FromString(encoder.encode(rating)) == expected
    for movie in movies.values():
        assert (tf.train.Example.FromString(executor.catalog_example(movie))
                == _protobuf_example(executor.movie_values(movie)))


def test_example_builder_names_a_bad_feature():
    from trainer import examples

    with pytest.raises(ValueError, match="unknown feature 'colour'"):
        examples.serialize({"colour": "red"})
    with pytest.raises(ValueError, match="feature 'movie_id' takes one value, got 2"):
        examples.serialize({F.MOVIE_ID: ["1", "2"]})
    assert examples.serialize({}) == tf.train.Example(
        features=tf.train.Features()).SerializeToString()
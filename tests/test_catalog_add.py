"""`movierec catalog add`: new movies in a served model without retraining.

The tiny trained model is version 1 of a temporary serving base that `movierec serve`
watches; the tests run in file order: the first add writes version 2 (checked signature by
signature), the server picks it up, bad input writes nothing, and a second add on top of
the added version writes version 3."""

import collections
import os
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow as tf

from components.movielens_example_gen import executor, movielens
from conftest import cli_output
from serving import catalog
from test_serving import Server, _status, _wait_for
from trainer import saved_model
from trainer import signatures as S

NEW_FAN = "1001"  # a new movie of the user's favourite genres
NEW_OTHER = "1002"  # a new movie of the genres they like least
NEW_LATER = "1003"  # added to the added version
AT = 890_000_000  # a time in the synthetic data's span (not "now": it moves between calls)


def _u_item_line(movie_id, title, genres, date="01-Jan-1995"):
    flags = "|".join("1" if g in genres else "0" for g in movielens.ML100K_GENRES)
    return f"{movie_id}|{title}|{date}||http://example.com/{movie_id}|{flags}\n"


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def fan(ml100k_dir, synth_data):
    """(user, their favourite genres, genres they like least, their favourite movies'
    title words and median year): from the training ratings of the user with the most."""
    train = [r for r in movielens.iter_ratings(ml100k_dir)
             if executor.random_bucket(r, 42) >= 0.2]  # as the example_files fixture splits
    user = collections.Counter(r.user_id for r in train).most_common(1)[0][0]
    movies = {m.movie_id: m for m in synth_data.movies}
    mine = sorted((r for r in train if r.user_id == user), key=lambda r: -r.rating)
    top = [movies[r.movie_id] for r in mine[:8]]
    liked = collections.Counter(g for m in top for g in m.genres)
    favourite = [g for g, _ in liked.most_common(2)]
    rated = collections.defaultdict(list)
    for r in mine:
        for g in movies[r.movie_id].genres:
            rated[g].append(r.rating)
    disliked = sorted((g for g in rated if g not in favourite and len(rated[g]) >= 2),
                      key=lambda g: np.mean(rated[g]))[:2]
    words = collections.Counter(w for m in top for w in m.title.split()[:-2])
    year = int(np.median([m.release_year for m in top]))
    return user, favourite, disliked, [w for w, _ in words.most_common(2)], year


@pytest.fixture(scope="module")
def base(tmp_path_factory, trained_model):
    """A serving base holding the trained model as version 1."""
    root = tmp_path_factory.mktemp("catalog-serving")
    shutil.copytree(trained_model[0], root / "movierec" / "1")
    return root


@pytest.fixture(scope="module")
def server(base, tmp_path_factory):
    s = Server(base, tmp_path_factory.mktemp("catalog-server"))
    s.wait_ready()
    _wait_for(lambda: _status(s).get("1", {}).get("state") == "AVAILABLE", "version 1")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def new_movies(tmp_path_factory, fan):
    user, favourite, disliked, words, year = fan
    path = tmp_path_factory.mktemp("new-movies") / "u.item"
    path.write_text(
        _u_item_line(NEW_FAN, f"{' '.join(words)} Returns ({year})", favourite)
        + _u_item_line(NEW_OTHER, f"Quiet Meadow ({year})", disliked), encoding="latin-1")
    return path


def _versions(base):
    return sorted(os.listdir(base / "movierec"))


def _recommend(model, user, k=100):
    out = saved_model.call(model, S.RECOMMEND_AT, user_id=tf.constant([user]),
                           timestamp=tf.constant([AT], tf.int64), k=tf.constant([k], tf.int64))
    return [m.decode() for m in out[S.MOVIE_IDS].numpy()[0]], out[S.SCORES].numpy()[0]


# --------------------------------------------------------------------------------- tests
def test_add_writes_a_new_version_with_the_new_movies(capsys, base, server, new_movies, fan,
                                                      trained_model, example_files):
    user, favourite, *_ = fan
    old = saved_model.load(str(trained_model[0]))
    old_ids = [m.decode() for m in old.movie_ids.numpy()]
    rc, out, err = cli_output(capsys, "catalog", "add", "--model-base", str(base),
                              "--movies", str(new_movies))
    assert rc == 0, err
    assert "added 2 movies" in out and "version 2" in out
    assert _versions(base) == ["1", "2"]  # no temporary directory left behind

    new = saved_model.load(str(base / "movierec" / "2"))
    ids = [m.decode() for m in new.movie_ids.numpy()]
    assert ids == old_ids + [NEW_FAN, NEW_OTHER]  # the catalog: the old one, then the new
    titles = [t.decode() for t in new.movie_titles.numpy()]
    assert titles[:len(old_ids)] == [t.decode() for t in old.movie_titles.numpy()]
    old_embeddings = old.candidate_embeddings.numpy()
    embeddings = new.candidate_embeddings.numpy()
    assert embeddings.shape == (len(old_ids) + 2, old_embeddings.shape[1])
    assert embeddings[:len(old_ids)].tobytes() == old_embeddings.tobytes()  # bit for bit
    # the new rows are the candidate tower's embeddings of the movies' features
    movies = movielens.read_movie_file(new_movies)
    inputs = {k: tf.constant(v) for k, v in catalog.movie_inputs(movies.values()).items()}
    np.testing.assert_allclose(embeddings[len(old_ids):], new.embed_movies(**inputs).numpy(),
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(embeddings[-1], embeddings[-2])  # features, not one OOV row

    # every signature is the one of version 1, and answers
    for name in S.ALL:
        assert (new.signatures[name].structured_input_signature
                == old.signatures[name].structured_input_signature), name
        assert (new.signatures[name].structured_outputs.keys()
                == old.signatures[name].structured_outputs.keys()), name
    top, scores = _recommend(new, user)
    assert NEW_FAN in top  # the user's top-100 (the whole catalog here: 82 movies)
    assert len(top) == len(ids) and len(set(top)) == len(top)
    assert top.index(NEW_FAN) < top.index(NEW_OTHER)  # their genres, ahead of the others'
    assert top.index(NEW_FAN) < len(top) // 2  # in the top half of the whole catalog
    old_top, old_scores = _recommend(old, user)
    kept = [m for m in top if m not in (NEW_FAN, NEW_OTHER)]
    assert kept == old_top  # the old movies keep their order and scores
    np.testing.assert_array_equal(np.array([s for m, s in zip(top, scores) if m in kept]),
                                  old_scores)
    catalog_scores = saved_model.call(new, S.SCORE_CATALOG, user_id=tf.constant([user]),
                                      timestamp=tf.constant([AT], tf.int64))
    np.testing.assert_allclose(catalog_scores[S.SCORES].numpy()[0][ids.index(NEW_FAN)],
                               scores[top.index(NEW_FAN)], rtol=1e-5)
    rated = saved_model.call(new, S.RATE, user_id=tf.constant([user, user, user]),
                             movie_id=tf.constant([NEW_FAN, "1", "no-such-movie"]))
    assert rated[S.KNOWN_MOVIE].numpy().tolist() == [True, True, False]
    assert np.isfinite(rated[S.RATING].numpy()).all()
    ten = saved_model.call(new, S.RECOMMEND, user_id=tf.constant([user]))
    assert ten[S.MOVIE_IDS].shape == (1, S.DEFAULT_K)
    examples = [r.numpy() for r in tf.data.TFRecordDataset(
        example_files["eval"], compression_type="GZIP").take(3)]
    np.testing.assert_allclose(
        new.signatures[S.SERVING_DEFAULT](examples=tf.constant(examples))[S.RATING].numpy(),
        old.signatures[S.SERVING_DEFAULT](examples=tf.constant(examples))[S.RATING].numpy(),
        rtol=1e-6)


def test_the_server_picks_the_new_version_up(server, fan):
    user = fan[0]
    _wait_for(lambda: _status(server).get("2", {}).get("state") == "AVAILABLE", "version 2")
    status, body = server.predict({"signature_name": "recommend_at", "instances": [
        {"user_id": user, "timestamp": 0, "k": 100}]}, "/v1/models/movierec/versions/2:predict")
    assert status == 200, body
    assert NEW_FAN in body["predictions"][0]["movie_ids"]
    status, body = server.predict({"signature_name": "rate", "inputs": {
        "user_id": [user], "movie_id": [NEW_FAN]}})
    assert status == 200 and body["outputs"]["known_movie"] == [True]


@pytest.mark.parametrize("name, text, message", [
    ("u.item", _u_item_line("5", "Again (1990)", ["Drama"]),
     "movie 5 is already in the catalog"),
    ("u.item", _u_item_line(NEW_LATER, "Fine (1990)", ["Drama"])
     + _u_item_line(NEW_FAN, "Twice (1990)", ["Drama"]) + _u_item_line("7", "X", ["War"]),
     f"movies {NEW_FAN}, 7 are already in the catalog"),
    ("u.item", "1003|Broken (1990)|01-Jan-1990\n", "u.item line 1: expected 24 '|'"),
    ("movies.csv", "movieId,title\n1003,Nope\n", "movies.csv line 1: expected header"),
    ("movies.dat", "abc::Title (1990)::Drama\n", "movies.dat line 1: movie id 'abc'"),
    ("new.txt", "1003::Title (1990)::Drama\n", "cannot tell the layout of new.txt"),
    ("u.item", "", "u.item is empty"),
])
def test_bad_input_is_one_line_and_writes_nothing(capsys, base, tmp_path, name, text,
                                                  message):
    before = _versions(base)
    path = tmp_path / name
    path.write_text(text, encoding="latin-1")
    rc, out, err = cli_output(capsys, "catalog", "add", "--model-base", str(base),
                              "--movies", str(path))
    assert rc == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("movierec: error: "), err
    assert message in err, err
    assert _versions(base) == before


def test_a_missing_file_or_base_is_one_line(capsys, base, tmp_path):
    rc, _, err = cli_output(capsys, "catalog", "add", "--model-base", str(base),
                            "--movies", str(tmp_path / "movies.dat"))
    assert rc == 2 and "no such movie file" in err and len(err.splitlines()) == 1
    movies = tmp_path / "movies.dat"
    movies.write_text(f"{NEW_LATER}::Later (1999)::Comedy\n")
    rc, _, err = cli_output(capsys, "catalog", "add", "--model-base", str(tmp_path / "none"),
                            "--movies", str(movies))
    assert rc == 2 and "is not a directory" in err
    rc, _, err = cli_output(capsys, "catalog", "add", "--model-base", str(tmp_path),
                            "--movies", str(movies))
    assert rc == 2 and "no SavedModel" in err
    assert _versions(base) == ["1", "2"]


def test_a_failed_write_leaves_no_version_behind(capsys, base, tmp_path, monkeypatch):
    def failing_save(obj, path, **kwargs):  # half a version written, then the disk is full
        (pathlib.Path(path) / "saved_model.pb").write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tf.saved_model, "save", failing_save)
    movies = tmp_path / "movies.dat"
    movies.write_text(f"{NEW_LATER}::Later (1999)::Comedy\n")
    rc, out, err = cli_output(capsys, "catalog", "add", "--model-base", str(base),
                              "--movies", str(movies))
    assert rc == 2 and out == "" and len(err.splitlines()) == 1
    assert "No space left on device" in err, err
    assert _versions(base) == ["1", "2"]  # neither version 3 nor the temporary directory


def test_an_added_version_takes_more_movies(capsys, base, server, tmp_path, fan):
    movies = tmp_path / "later.dat"  # another layout, ml-1m's, given by --layout
    movies.write_text(f"{NEW_LATER}::Later Night (1996)::Comedy|Drama\n", encoding="latin-1")
    rc, out, err = cli_output(capsys, "catalog", "add", "--model-base", str(base),
                              "--movies", str(movies), "--layout", "ml-1m")
    assert rc == 0, err
    assert "to version 2: version 3" in out
    model = saved_model.load(str(base / "movierec" / "3"))
    ids = [m.decode() for m in model.movie_ids.numpy()]
    assert ids[-3:] == [NEW_FAN, NEW_OTHER, NEW_LATER]
    rated = saved_model.call(model, S.RATE, user_id=tf.constant([fan[0]]),
                             movie_id=tf.constant([NEW_LATER]))
    assert rated[S.KNOWN_MOVIE].numpy().tolist() == [True]
    _wait_for(lambda: _status(server).get("3", {}).get("state") == "AVAILABLE", "version 3")


def test_read_movie_file_reads_each_layout(tmp_path):
    (tmp_path / "u.item").write_text(_u_item_line("7", "Seven (1995)", ["Drama", "War"]),
                                     encoding="latin-1")
    (tmp_path / "movies.dat").write_text("8::Eight (1996)::Comedy|Drama\n")
    (tmp_path / "movies.csv").write_text('movieId,title,genres\n9,"Nine, The (1997)",'
                                         "(no genres listed)\n")
    (tmp_path / "other.csv").write_text("movieId,title,genres\n10,Ten,Action\n")
    assert movielens.read_movie_file(tmp_path / "u.item") == {
        "7": movielens.Movie("7", "Seven (1995)", ("Drama", "War"), 1995)}
    assert movielens.read_movie_file(tmp_path / "movies.dat") == {
        "8": movielens.Movie("8", "Eight (1996)", ("Comedy", "Drama"), 1996)}
    assert movielens.read_movie_file(tmp_path / "movies.csv") == {
        "9": movielens.Movie("9", "Nine, The (1997)", (), 1997)}
    assert movielens.read_movie_file(tmp_path / "other.csv", "ml-latest") == {
        "10": movielens.Movie("10", "Ten", ("Action",), 0)}
    with pytest.raises(movielens.DataError, match="cannot tell the layout of other.csv"):
        movielens.read_movie_file(tmp_path / "other.csv")


def test_a_scann_indexed_model_takes_new_movies(capsys, tmp_path, example_files,
                                                transform_dir, new_movies, fan):
    """The ScaNN index holds the exported movies; the added ones are scored exactly and
    merged with its candidates (the re-saved model keeps ScaNN's ops)."""
    from conftest import SMALL_HPARAMS
    from trainer.model import HParams
    from trainer.run import train_and_export

    first = tmp_path / "movierec" / "1"
    train_and_export([example_files["train"]], [example_files["catalog"]], transform_dir,
                     str(first), HParams(index="scann", **SMALL_HPARAMS))
    rc, _, err = cli_output(capsys, "catalog", "add", "--model-base", str(tmp_path),
                            "--movies", str(new_movies))
    assert rc == 0, err
    old = saved_model.load(str(first))
    new = saved_model.load(str(tmp_path / "movierec" / "2"))
    top, scores = _recommend(new, fan[0])
    old_top, old_scores = _recommend(old, fan[0])
    assert {NEW_FAN, NEW_OTHER} <= set(top)
    assert [m for m in top if m not in (NEW_FAN, NEW_OTHER)] == old_top
    np.testing.assert_array_equal(
        np.array([s for m, s in zip(top, scores) if m not in (NEW_FAN, NEW_OTHER)]),
        old_scores)
    # the server's path (the version loaded into a Session, ScaNN's ops in it)
    # answers as the loaded module does
    from serving.model import ServedModel

    served = ServedModel.load(str(tmp_path / "movierec" / "2"), 2)
    feeds, _ = served.signatures[S.RECOMMEND_AT].feeds(
        {"instances": [{S.USER_ID: fan[0], S.TIMESTAMP: AT, S.K: 100}]}, served.catalog)
    out = served.signatures[S.RECOMMEND_AT].call(feeds)
    assert [m.decode() for m in out[S.MOVIE_IDS][0]] == top
    np.testing.assert_allclose(out[S.SCORES][0], scores, rtol=1e-5, atol=1e-6)
    served.session.close()

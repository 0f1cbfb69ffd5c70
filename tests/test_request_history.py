"""Request context (issue 13): histories built before each example's time in training,
the request's history and demographics merged with the stored history in every
signature, exclusion of known movies, and the CLI's --rated."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from conftest import cli_output
from trainer import features as F
from trainer import saved_model
from trainer import signatures as S
from trainer.history import CausalHistory, HistoryMerge


# --- training: causal histories ------------------------------------------------------------
def _store():
    # user 0: movies 10, 11, 12 at t = 100, 200, 200; user 1: movie 13 at t = 50
    return CausalHistory(users=[0, 0, 0, 1], movies=[10, 11, 12, 13],
                         times=[100, 200, 200, 50], ratings=[5.0, 3.0, 4.0, 1.0],
                         length=4, mean=3.0)


def test_an_example_sees_only_ratings_strictly_before_its_time():
    store = _store()
    start, end = store.slices([0, 0, 0, 1, 2], [100, 200, 201, 50, 999])
    got = store.batch(start, end)
    ids = got[F.HISTORY_IDS_XF].numpy()
    assert ids[0].tolist() == [0, 0, 0, 0]  # nothing before t=100
    assert ids[1].tolist() == [11, 0, 0, 0]  # t=200: not the two ratings at 200
    assert ids[2].tolist() == [13, 12, 11, 0] or ids[2].tolist() == [12, 13, 11, 0]
    assert ids[3].tolist() == [0, 0, 0, 0] and ids[4].tolist() == [0, 0, 0, 0]
    assert got[F.HISTORY_RATINGS_XF].numpy()[1, 0] == pytest.approx(2.0)  # 5 - mean 3
    assert got[F.HISTORY_TIMES_XF].numpy()[2].max() == 200


def test_a_later_rating_never_changes_an_earlier_examples_features(example_files,
                                                                  transform_dir):
    """The Trainer's batches (trainer/data.py + fit.with_causal_history) for the training
    ratings, and again with every rating after the median time changed: the examples
    before that time get identical features."""
    import tensorflow_transform as tft

    from trainer import data
    from trainer.fit import with_causal_history
    from trainer.model import HParams

    layer = tft.TFTransformOutput(transform_dir).transform_features_layer()
    ratings, _ = data.load_ratings(data.tfrecord_files([example_files["train"]]), layer)
    hp = HParams(history_len=50)
    times = ratings[F.TIMESTAMP_XF]
    cut = int(np.median(times))
    changed_rows = dict(ratings.rows)
    later = times >= cut
    changed_rows[F.RATING_XF] = np.where(later, 6.0 - ratings[F.RATING_XF],
                                         ratings[F.RATING_XF]).astype(np.float32)
    changed_rows[F.MOVIE_ID_XF] = np.where(later, 0, ratings[F.MOVIE_ID_XF])
    changed = data.Ratings(changed_rows, ratings.movies, ratings.users)

    def features(r):
        # a plain mean would move with the changed ratings: centre by the original mean
        r, _ = with_causal_history(r, None, hp)
        batch = next(iter(r.dataset(len(r))))
        return {k: v.numpy() for k, v in batch.items() if k in F.HISTORY_XF}

    before, after = features(ratings), features(changed)
    early = ~later
    mean_shift = float(np.mean(changed_rows[F.RATING_XF]) - np.mean(ratings[F.RATING_XF]))
    np.testing.assert_array_equal(before[F.HISTORY_IDS_XF][early],
                                  after[F.HISTORY_IDS_XF][early])
    np.testing.assert_array_equal(before[F.HISTORY_TIMES_XF][early],
                                  after[F.HISTORY_TIMES_XF][early])
    kept = before[F.HISTORY_IDS_XF][early] > 0
    np.testing.assert_allclose(before[F.HISTORY_RATINGS_XF][early][kept] - mean_shift,
                               after[F.HISTORY_RATINGS_XF][early][kept], atol=1e-5)
    # and the later examples did see the earlier ratings
    assert (before[F.HISTORY_IDS_XF][later] > 0).any()


def test_merge_keeps_stored_ratings_before_now_and_lets_the_request_win():
    merge = HistoryMerge(length=3)
    stored = {F.HISTORY_IDS_XF: tf.constant([[5, 4, 3]], tf.int32),
              F.HISTORY_RATINGS_XF: tf.constant([[0.5, 1.0, -1.0]]),
              F.HISTORY_TIMES_XF: tf.constant([[300, 200, 100]], tf.int64)}
    request = {F.HISTORY_IDS_XF: tf.constant([[4, 0]], tf.int32),
               F.HISTORY_RATINGS_XF: tf.constant([[-2.0, 0.0]]),
               F.HISTORY_TIMES_XF: tf.constant([[250, 0]], tf.int64)}
    out = merge(stored, tf.constant([300], tf.int64), request)
    # movie 5 at 300 is not before now=300; movie 4: the request's rating and time
    assert out[F.HISTORY_IDS_XF].numpy().tolist() == [[4, 3, 0]]
    assert out[F.HISTORY_RATINGS_XF].numpy().tolist() == [[-2.0, -1.0, 0.0]]
    assert out[F.HISTORY_TIMES_XF].numpy().tolist() == [[250, 100, 0]]
    alone = merge(stored, tf.constant([1000], tf.int64))
    assert alone[F.HISTORY_IDS_XF].numpy().tolist() == [[5, 4, 3]]


# --- the exported model ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(trained_model):
    path, _ = trained_model
    return saved_model.load(str(path))


def _user_ratings(synth_data, user: str):
    r = synth_data.ratings
    mine = r[r["user"] == int(user)]
    return mine[np.argsort(mine["timestamp"])]


def _history(movies, ratings, stamps):
    return {S.HISTORY_MOVIE_IDS: tf.constant([[str(m) for m in movies]], tf.string),
            S.HISTORY_RATINGS: tf.constant([list(ratings)], tf.float32),
            S.HISTORY_TIMESTAMPS: tf.constant([list(stamps)], tf.int64)}


def _movie_id(synth_data, index: int) -> str:
    return synth_data.movies[int(index)].movie_id


def _scores(model, user, when, **context):
    return saved_model.call(model, S.SCORE_CATALOG, user_id=tf.constant([user]),
                            timestamp=tf.constant([when], tf.int64), **context)


def test_every_signature_takes_the_history_and_demographics(model):
    for name in (S.RECOMMEND, S.RECOMMEND_AT, S.RATE, S.SCORE_CATALOG):
        inputs = model.signatures[name].structured_input_signature[1]
        assert set(S.CONTEXT_INPUTS) <= set(inputs), name
    assert S.EXCLUDE_RATED in model.signatures[S.RECOMMEND_AT].structured_input_signature[1]


def _train_ratings(example_files, user: str):
    """(movie ids, ratings, timestamps) of `user` in the training examples."""
    spec = F.raw_feature_spec((F.QUERY_FEATURES[0], F.QUERY_FEATURES[1],
                               F.MOVIE_FEATURES[0], F.LABEL_FEATURE))
    rows = []
    for record in tf.data.TFRecordDataset(example_files["train"], compression_type="GZIP"):
        x = tf.io.parse_single_example(record, spec)
        if x[F.USER_ID].numpy()[0].decode() == user:
            rows.append((x[F.MOVIE_ID].numpy()[0].decode(), float(x[F.RATING].numpy()[0]),
                         int(x[F.TIMESTAMP].numpy()[0])))
    return [list(c) for c in zip(*sorted(rows, key=lambda r: r[2]))]


def test_the_request_repeating_the_stored_history_changes_nothing(model, example_files):
    """The stored history and the same ratings sent by the request are one history."""
    movies, ratings, stamps = _train_ratings(example_files, "1")
    when = max(stamps) + 10
    alone = _scores(model, "1", when)[S.SCORES].numpy()
    both = _scores(model, "1", when, **_history(movies, ratings, stamps))[S.SCORES].numpy()
    np.testing.assert_allclose(alone, both, rtol=1e-5, atol=1e-5)


def test_an_unknown_user_is_answered_from_their_history(model, synth_data):
    mine = _user_ratings(synth_data, "1")
    when = int(mine["timestamp"].max()) + 10
    movies = [_movie_id(synth_data, m) for m in mine["movie"]]
    history = _history(movies, mine["rating"], mine["timestamp"])
    empty = _scores(model, "stranger", when)
    told = _scores(model, "stranger", when, **history)
    assert not told[S.KNOWN_USER].numpy()[0]
    assert not np.allclose(empty[S.SCORES].numpy(), told[S.SCORES].numpy())
    # recommend leaves the history out; recommend_at only with exclude_rated
    rec = saved_model.call(model, S.RECOMMEND, user_id=tf.constant(["stranger"]), **history)
    assert not set(m.decode() for m in rec[S.MOVIE_IDS].numpy()[0]) & set(movies)
    every = len(synth_data.movies)
    for exclude in (True, False):
        top = saved_model.call(model, S.RECOMMEND_AT, user_id=tf.constant(["stranger"]),
                               timestamp=tf.constant([when], tf.int64),
                               k=tf.constant([every], tf.int64),
                               exclude_rated=tf.constant([exclude]), **history)
        shown = [m.decode() for m in top[S.MOVIE_IDS].numpy()[0]]
        if exclude:
            assert not set(shown[:every - len(set(movies))]) & set(movies)
        else:
            assert set(movies) <= set(shown)


def test_known_users_history_is_left_out_of_recommend(model, example_files):
    rated = set(_train_ratings(example_files, "2")[0])
    rec = saved_model.call(model, S.RECOMMEND, user_id=tf.constant(["2"]))
    assert not set(m.decode() for m in rec[S.MOVIE_IDS].numpy()[0]) & rated


def test_recommend_at_is_the_catalog_ranking_without_the_history(model, example_files):
    """recommend_at with exclude_rated: the best k of score_catalog's scores at the same
    time once the merged history's movies are out (a request history for a stranger, the
    stored one for user 2)."""
    ids = np.array([m.decode() for m in model.movie_ids.numpy()])
    given, stored = _train_ratings(example_files, "1"), _train_ratings(example_files, "2")
    asks = [("stranger", _history(*given), set(given[0])), ("2", {}, set(stored[0]))]
    when = max(stored[2]) + 10  # the stored history: the ratings before the request
    for user, history, rated in asks:
        scores = _scores(model, user, when, **history)[S.SCORES].numpy()[0]
        top = saved_model.call(model, S.RECOMMEND_AT, user_id=tf.constant([user]),
                               timestamp=tf.constant([when], tf.int64),
                               k=tf.constant([20], tf.int64),
                               exclude_rated=tf.constant([True]), **history)
        left = [i for i in np.argsort(-scores, kind="stable") if ids[i] not in rated]
        assert [m.decode() for m in top[S.MOVIE_IDS].numpy()[0]] == list(ids[left[:20]])
        np.testing.assert_allclose(top[S.SCORES].numpy()[0], scores[left[:20]], rtol=1e-5,
                                   atol=1e-6)


def test_demographics_reach_an_unknown_user(model):
    base = _scores(model, "stranger", 0)[S.SCORES].numpy()
    told = _scores(model, "stranger", 0, user_age=tf.constant([25], tf.int64),
                   user_gender=tf.constant(["F"]), user_occupation=tf.constant(["writer"]),
                   user_zip=tf.constant(["55105"]))[S.SCORES].numpy()
    assert not np.allclose(base, told)


def test_a_request_with_nothing_gets_what_was_popular_near_its_time(model, example_files):
    """No known user, no history, no demographics: the scores are each movie's number of
    training ratings in the 1/50 of them (by time) that holds the request's time (after
    the training data: the newest), plus its all-time count / (ratings + 1); counted here
    from the training examples."""
    spec = F.raw_feature_spec((F.QUERY_FEATURES[1], F.MOVIE_FEATURES[0]))
    rated = [(int(x[F.TIMESTAMP].numpy()[0]), x[F.MOVIE_ID].numpy()[0].decode())
             for x in (tf.io.parse_single_example(r, spec) for r in tf.data.TFRecordDataset(
                 example_files["train"], compression_type="GZIP"))]
    times = sorted(t for t, _ in rated)
    n = len(times)
    edges = [times[(b * n) // 50] for b in range(1, 50)]
    ids = [m.decode() for m in model.movie_ids.numpy()]

    def expected(when):
        starts = [e for e in edges if e <= when]
        low = starts[-1] if starts else -np.inf
        high = min([e for e in edges if e > when], default=np.inf)
        near = [m for t, m in rated if low <= t < high]
        return np.array([near.count(i) + sum(m == i for _, m in rated) / (n + 1)
                         for i in ids])

    for when in (times[-1] + 86400, times[n // 2], times[n // 5]):
        got = _scores(model, "stranger", when)
        assert not got[S.KNOWN_USER].numpy()[0]
        np.testing.assert_allclose(got[S.SCORES].numpy()[0], expected(when), rtol=1e-5)
    assert not np.allclose(expected(times[-1] + 1), expected(times[n // 5]))
    top = saved_model.call(model, S.RECOMMEND_AT, user_id=tf.constant(["stranger", "1"]),
                           timestamp=tf.constant([times[n // 2]] * 2, tf.int64),
                           k=tf.constant([10, 10], tf.int64))
    want = expected(times[n // 2])
    shown = [ids.index(m.decode()) for m in top[S.MOVIE_IDS].numpy()[0]]
    np.testing.assert_allclose(want[shown], np.sort(want)[::-1][:10], rtol=1e-6)
    # a known user, a history or a demographic: the towers answer, not the counts
    known = _scores(model, "1", times[n // 2])[S.SCORES].numpy()[0]
    aged = _scores(model, "stranger", times[n // 2],
                   user_age=tf.constant([30], tf.int64))[S.SCORES].numpy()[0]
    told = _scores(model, "stranger", times[n // 2],
                   **_history([ids[0]], [4.0], [times[0]]))[S.SCORES].numpy()[0]
    for scores in (known, aged, told):
        assert not np.allclose(scores, want)


def test_rate_and_serving_default_read_the_request_history(model, synth_data):
    mine = _user_ratings(synth_data, "1")
    movies = [_movie_id(synth_data, m) for m in mine["movie"]]
    target = _movie_id(synth_data, 0)
    when = int(mine["timestamp"].max()) + 10
    rate = lambda **h: float(saved_model.call(  # noqa: E731
        model, S.RATE, user_id=tf.constant(["stranger"]), movie_id=tf.constant([target]),
        timestamp=tf.constant([when], tf.int64), **h)[S.RATING].numpy()[0])
    high = rate(**_history(movies, [5.0] * len(movies), mine["timestamp"]))
    low = rate(**_history(movies, [1.0] * len(movies), mine["timestamp"]))
    assert high > low  # a user who loves everything rates higher
    from components.movielens_example_gen.executor import ExampleEncoder  # noqa: F401
    example = tf.train.Example()
    f = example.features.feature
    f[F.USER_ID].bytes_list.value.append(b"stranger")
    f[F.TIMESTAMP].int64_list.value.append(when)
    movie = synth_data.movies[0]
    f[F.MOVIE_ID].bytes_list.value.append(movie.movie_id.encode())
    f[F.MOVIE_TITLE].bytes_list.value.append(movie.title.encode())
    f[F.MOVIE_GENRES].bytes_list.value.extend(g.encode() for g in movie.genres)
    f[F.MOVIE_YEAR].int64_list.value.append(movie.release_year)
    f[F.USER_AGE].int64_list.value.append(0)
    for key in (F.USER_GENDER, F.USER_OCCUPATION, F.USER_ZIP):
        f[key].bytes_list.value.append(b"")
    f[F.HISTORY_MOVIE_IDS].bytes_list.value.extend(m.encode() for m in movies)
    f[F.HISTORY_RATINGS].float_list.value.extend([5.0] * len(movies))
    f[F.HISTORY_TIMESTAMPS].int64_list.value.extend(int(t) for t in mine["timestamp"])
    through_example = float(model.signatures[S.SERVING_DEFAULT](
        examples=tf.constant([example.SerializeToString()]))[S.RATING].numpy()[0])
    assert through_example == pytest.approx(high, abs=1e-4)


# --- because ------------------------------------------------------------------------------
def _because(out) -> list:
    return [[b.decode() for b in row] for row in out[S.BECAUSE].numpy()]


def _expected_because(model, recommended, history, ratings) -> list:
    """numpy: per recommended movie id, the history movie of argmax cosine (candidate
    embeddings) among those rated at or above the mean of `ratings` (all when none)."""
    ids = [m.decode() for m in model.movie_ids.numpy()]
    unit = model.candidate_embeddings.numpy().astype(np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    ratings = np.asarray(ratings, dtype=np.float64)
    liked = [m for m, r in zip(history, ratings) if r >= ratings.mean()] or list(history)
    past = unit[[ids.index(m) for m in liked]]
    return [liked[int(np.argmax(past @ unit[ids.index(m)]))] for m in recommended]


def test_because_one_loved_movie_explains_everything(model, example_files):
    movie = _train_ratings(example_files, "1")[0][0]
    history = _history([movie], [5.0], [880_000_000])
    rec = saved_model.call(model, S.RECOMMEND, user_id=tf.constant(["stranger"]), **history)
    assert rec[S.BECAUSE].shape == rec[S.MOVIE_IDS].shape
    assert _because(rec) == [[movie] * rec[S.MOVIE_IDS].shape[1]]
    at = saved_model.call(model, S.RECOMMEND_AT, user_id=tf.constant(["stranger"]),
                          timestamp=tf.constant([0], tf.int64), k=tf.constant([30], tf.int64),
                          exclude_rated=tf.constant([False]), **history)
    assert _because(at) == [[movie] * 30]


@pytest.mark.parametrize("ratings", [(5.0, 5.0), (4.0, 4.5), (5.0, 2.0)])
def test_because_is_the_most_similar_liked_history_movie(model, example_files, ratings):
    movies = _train_ratings(example_files, "1")[0]
    # the two history movies: the first one and the one least like it
    ids = [m.decode() for m in model.movie_ids.numpy()]
    emb = model.candidate_embeddings.numpy()
    first = emb[ids.index(movies[0])]
    cos = [float(emb[ids.index(m)] @ first / np.linalg.norm(emb[ids.index(m)]))
           for m in movies]
    history = [movies[0], movies[int(np.argmin(cos))]]
    inputs = _history(history, ratings, [880_000_000, 880_000_100])
    at = saved_model.call(model, S.RECOMMEND_AT, user_id=tf.constant(["stranger"]),
                          timestamp=tf.constant([0], tf.int64), k=tf.constant([50], tf.int64),
                          exclude_rated=tf.constant([True]), **inputs)
    shown = [m.decode() for m in at[S.MOVIE_IDS].numpy()[0]]
    got = _because(at)[0]
    assert got == _expected_because(model, shown, history, ratings)
    if ratings[0] == ratings[1]:  # both count: each explains some of the 50
        assert set(got) == set(history)
    else:  # only the better rated one
        assert set(got) == {history[int(np.argmax(ratings))]}


def test_because_reads_a_known_users_stored_history(model, example_files):
    movies, ratings, _ = _train_ratings(example_files, "2")
    rec = saved_model.call(model, S.RECOMMEND, user_id=tf.constant(["2"]))
    shown = [m.decode() for m in rec[S.MOVIE_IDS].numpy()[0]]
    assert _because(rec)[0] == _expected_because(model, shown, movies, ratings)


def test_because_is_empty_without_a_history(model):
    rec = saved_model.call(model, S.RECOMMEND, user_id=tf.constant(["stranger", "nobody"]))
    assert _because(rec) == [[""] * rec[S.MOVIE_IDS].shape[1]] * 2
    at = saved_model.call(model, S.RECOMMEND_AT, user_id=tf.constant(["stranger"]),
                          timestamp=tf.constant([0], tf.int64), k=tf.constant([5], tf.int64))
    assert _because(at) == [[""] * 5]


# --- the CLI ------------------------------------------------------------------------------------
def test_cli_rated(trained_model, synth_data, capsys):
    path, _ = trained_model
    first = synth_data.movies[0].movie_id
    rc, out, err = cli_output(capsys, "recommend", "--model", path, "--user", "stranger",
                              "--rated", f"{first}:5", "--json")
    assert rc == 0, err
    import json

    shown = json.loads(out)
    assert first not in [r["movie_id"] for r in shown["recommendations"]]
    assert [r["because"] for r in shown["recommendations"]] == [first] * 10
    rc, out, err = cli_output(capsys, "recommend", "--model", path, "--user", "stranger",
                              "--rated", f"{first}:5")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[1].split()[:4] == ["rank", "movie", "score", "because"]
    assert all(line.split()[3] == first for line in lines[2:])
    rc, out, err = cli_output(capsys, "recommend", "--model", path, "--user", "stranger")
    assert rc == 0, err
    assert all(line.split()[3] == "-" for line in out.splitlines()[2:])
    for bad, says in ((f"{first}:9", "outside"), ("nope:4", "not in the model's catalog"),
                      (f"{first}-4", "is not movie:rating")):
        rc, _, err = cli_output(capsys, "recommend", "--model", path, "--user", "1",
                                "--rated", bad)
        assert rc == 2, err
        lines = err.splitlines()
        assert len(lines) == 1 and says in lines[0], err

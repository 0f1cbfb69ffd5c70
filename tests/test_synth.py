"""`movierec synth`: synthetic MovieLens directories that the reader and ExampleGen accept,
with skewed popularity and activity, deterministic under a seed, written in chunks."""

import collections

import pytest

from components.movielens_example_gen import movielens, synth
from pipeline import cli


def _synth(capsys, *argv):
    capsys.readouterr()
    rc = cli.main(["synth", *argv])
    captured = capsys.readouterr()
    return rc, captured.out.strip(), captured.err.strip()


@pytest.fixture(scope="module")
def latest_dir(tmp_path_factory):
    """ml-25m layout (the default) written by the CLI: 300 users, 400 movies, 9,000 ratings."""
    out = tmp_path_factory.mktemp("synth") / "latest"
    assert cli.main(["synth", "--users", "300", "--movies", "400", "--ratings", "9k",
                     "--output", str(out), "--seed", "7"]) == 0
    return out


def test_cli_prints_one_summary_line(tmp_path, capsys):
    rc, out, err = _synth(capsys, "--users", "50", "--movies", "60", "--ratings", "1000",
                          "--output", str(tmp_path / "d"))
    assert rc == 0 and not err
    assert len(out.splitlines()) == 1
    assert out.startswith("synth: 1,000 ratings") and str(tmp_path / "d") in out


def test_written_directory_is_ml_latest_with_the_requested_counts(latest_dir):
    assert movielens.detect_layout(latest_dir) == "ml-latest"
    assert (latest_dir / "ratings.csv").read_text().splitlines()[0] == \
        "userId,movieId,rating,timestamp"
    ratings = list(movielens.iter_ratings(latest_dir))  # validates every line
    movies = movielens.read_movies(latest_dir)
    assert len(ratings) == 9000
    assert len(movies) == 400
    assert movielens.read_users(latest_dir) == {}
    assert len({(r.user_id, r.movie_id) for r in ratings}) == 9000  # each pair once
    assert {r.movie_id for r in ratings} <= set(movies)
    assert 250 <= len({r.user_id for r in ratings}) <= 300
    values = collections.Counter(r.rating for r in ratings)
    assert set(values) <= {x / 2 for x in range(1, 11)}
    assert any(v % 1 for v in values)  # half stars
    assert 3.0 < sum(r.rating for r in ratings) / len(ratings) < 4.0
    for movie in movies.values():  # "Title (year)" and pipe-joined genres
        assert movie.title.endswith(f"({movie.release_year})")
        assert 1900 < movie.release_year < 2020
    assert sum(len(m.genres) > 1 for m in movies.values()) > 40
    # sorted by user, then time, as ml-latest is
    keys = [(int(r.user_id), r.timestamp) for r in ratings]
    assert keys == sorted(keys)


def test_every_rating_joins_as_example_gen_joins_them(latest_dir):
    from components.movielens_example_gen import executor

    import tensorflow as tf

    examples = [tf.train.Example.FromString(e)
                for e in executor.rating_examples(str(latest_dir))]
    assert len(examples) == 9000
    feature = examples[0].features.feature
    assert feature["movie_title"].bytes_list.value[0].decode().endswith(")")


def test_popularity_and_activity_are_skewed(latest_dir):
    ratings = list(movielens.iter_ratings(latest_dir))
    per_movie = sorted(collections.Counter(r.movie_id for r in ratings).values(), reverse=True)
    per_user = sorted(collections.Counter(r.user_id for r in ratings).values(), reverse=True)
    top_movies = sum(per_movie[:40]) / len(ratings)  # top 10% of the 400 movies
    top_users = sum(per_user[:30]) / len(ratings)  # top 10% of the 300 users
    assert top_movies > 0.3, top_movies
    assert top_users > 0.2, top_users
    assert per_movie[0] > 10 * per_movie[len(per_movie) // 2]
    assert per_user[0] > 3 * per_user[len(per_user) // 2]


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    args = dict(users=80, movies=90, ratings=2500)
    synth.write_dataset(tmp_path / "a", seed=3, **args)
    synth.write_dataset(tmp_path / "b", seed=3, **args)
    synth.write_dataset(tmp_path / "c", seed=4, **args)
    for name in ("ratings.csv", "movies.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()


def test_chunks_give_exact_counts_and_unique_pairs(tmp_path):
    summary = synth.write_dataset(tmp_path / "d", users=120, movies=50, ratings=4000, seed=1,
                                  chunk_ratings=300)
    assert summary["chunks"] > 5 and summary["ratings"] == 4000
    ratings = list(movielens.iter_ratings(tmp_path / "d"))
    assert len({(r.user_id, r.movie_id) for r in ratings}) == 4000
    # dense: every user rates up to every movie, still exactly once each
    synth.write_dataset(tmp_path / "full", users=6, movies=7, ratings=42, seed=2,
                        chunk_ratings=5)
    assert len({(r.user_id, r.movie_id) for r in movielens.iter_ratings(
        tmp_path / "full")}) == 42


def test_ml100k_layout(tmp_path, capsys):
    rc, out, _ = _synth(capsys, "--users", "40", "--movies", "70", "--ratings", "1500",
                        "--output", str(tmp_path / "old"), "--layout", "ml-100k")
    assert rc == 0
    d = tmp_path / "old"
    assert movielens.detect_layout(d) == "ml-100k"
    ratings = list(movielens.iter_ratings(d))
    users = movielens.read_users(d)
    movies = movielens.read_movies(d)
    assert len(ratings) == 1500 and len(users) == 40 and len(movies) == 70
    assert {r.rating for r in ratings} <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert {r.user_id for r in ratings} <= set(users)
    assert all(1 <= u.age <= 100 and u.gender in "MF" for u in users.values())
    assert all(m.genres for m in movies.values())


@pytest.mark.parametrize("argv, message", [
    (["--movies", "5", "--ratings", "10"], "needs --users"),
    (["--users", "0", "--movies", "5", "--ratings", "10"], "--users must be"),
    (["--users", "3", "--movies", "5", "--ratings", "abc"], "--ratings must be"),
    (["--users", "3", "--movies", "5", "--ratings", "1.5"], "--ratings must be"),
    (["--users", "3", "--movies", "5", "--ratings", "16"], "each user rates a movie"),
    (["--users", "3", "--movies", "5", "--ratings", "10", "--layout", "ml-1m"], "--layout"),
    (["--users", "3", "--movies", "5", "--ratings", "10", "--seed", "-1"], "--seed"),
    (["--users", "3", "--movies", "5", "--ratings", "10", "--seed", "x"], "--seed"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, argv, message):
    out_dir = tmp_path / "never"
    rc, out, err = _synth(capsys, *argv, "--output", str(out_dir))
    assert rc == 2 and not out
    assert len(err.splitlines()) == 1 and err.startswith("movierec: error: ")
    assert message in err
    assert not out_dir.exists()


def test_missing_output_and_output_that_is_a_file(tmp_path, capsys):
    rc, _, err = _synth(capsys, "--users", "3", "--movies", "5", "--ratings", "10")
    assert rc == 2 and "--output" in err
    (tmp_path / "file").write_text("x")
    rc, _, err = _synth(capsys, "--users", "3", "--movies", "5", "--ratings", "10",
                        "--output", str(tmp_path / "file"))
    assert rc == 2 and "not a directory" in err and len(err.splitlines()) == 1


def test_existing_data_is_kept_unless_forced(tmp_path, capsys):
    d = tmp_path / "d"
    small = ["--users", "10", "--movies", "20", "--ratings", "100", "--output", str(d)]
    assert _synth(capsys, *small, "--layout", "ml-100k")[0] == 0
    before = (d / "u.data").read_bytes()
    rc, _, err = _synth(capsys, *small)
    assert rc == 2 and "already holds" in err and "u.data" in err
    assert (d / "u.data").read_bytes() == before
    assert _synth(capsys, *small, "--force")[0] == 0
    # the other layout's files are gone, so the directory is unambiguous
    assert not (d / "u.data").exists() and movielens.detect_layout(d) == "ml-latest"
    assert len(list(movielens.iter_ratings(d))) == 100

"""Tests of the raw MovieLens reader, on tiny directories written by the tests themselves."""

from __future__ import annotations

import functools
import http.server
import os
import pathlib
import sys
import threading
import zipfile

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from components.movielens_example_gen import movielens as ml  # noqa: E402

GENRES_100K = ml.ML100K_GENRES


def _flags(*names: str) -> str:
    return "|".join("1" if genre in names else "0" for genre in GENRES_100K)


def write_100k(directory: pathlib.Path, *, with_genre_file: bool = True) -> pathlib.Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "u.data").write_text(
        "1\t10\t5\t881250949\n2\t20\t3\t891717742\n\n1\t20\t1\t878887116\n"
    )
    (directory / "u.item").write_bytes(
        (
            f"10|Toy Story (1995)|01-Jan-1995||http://x|{_flags('Animation', 'Comedy')}\n"
            f"20|Café Society|05-May-1997||http://y|{_flags('Drama')}\n"
            f"30|Nameless|||http://z|{_flags('unknown')}\n"
            f"10|Duplicate of ten (2001)|||http://w|{_flags('War')}\n"
        ).encode("latin-1")
    )
    (directory / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    if with_genre_file:
        (directory / "u.genre").write_text(
            "".join(f"{name}|{index}\n" for index, name in enumerate(GENRES_100K)) + "\n"
        )
    return directory


def write_1m(directory: pathlib.Path) -> pathlib.Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ratings.dat").write_text("1::1193::5::978300760\n2::661::3::978302109\n")
    (directory / "movies.dat").write_bytes(
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "661::James and the Giant Peach (1996) ::Animation|Children's|Musical\n"
        "5::Amélie::Comedy|Romance\n".encode("latin-1")
    )
    (directory / "users.dat").write_text(
        "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::20::55117\n"
    )
    return directory


def write_latest(directory: pathlib.Path) -> pathlib.Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n"
        "1,1,4.0,964982703\n"
        "1,3,0.5,964981247\n"
        "2,1,3.5,1445714835000\n"
    )
    (directory / "movies.csv").write_text(
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
        '3,"American President, The (1995)",Comedy|Drama|Romance\n'
        '4,"The ""Quoted"" Film (2010)",(no genres listed)\n'
        "5,Pokémon Heroes (2003),Animation\n",
        encoding="utf-8",
    )
    return directory


def raises_data_error(function, *args, match: str) -> str:
    """Calls ``function`` (draining a returned iterator); returns the DataError message."""
    with pytest.raises(ml.DataError) as info:
        result = function(*args)
        if hasattr(result, "__next__"):
            list(result)
    message = str(info.value)
    assert "\n" not in message
    assert match in message, message
    return message


# --- detection ----------------------------------------------------------------------------


def test_detects_each_layout(tmp_path):
    assert ml.detect_layout(write_100k(tmp_path / "a")) == "ml-100k"
    assert ml.detect_layout(write_1m(tmp_path / "b")) == "ml-1m"
    assert ml.detect_layout(str(write_latest(tmp_path / "c"))) == "ml-latest"
    assert ml.ratings_path(tmp_path / "b", "ml-1m") == tmp_path / "b" / "ratings.dat"


def test_detect_rejects_empty_and_missing_directories(tmp_path):
    message = raises_data_error(ml.detect_layout, tmp_path, match=str(tmp_path))
    assert "u.data+u.item" in message and "ratings.csv+movies.csv" in message
    raises_data_error(ml.detect_layout, tmp_path / "nope", match="does not exist")


# --- movies, users, ratings ---------------------------------------------------------------


def test_reads_ml100k(tmp_path):
    data = write_100k(tmp_path)
    movies = ml.read_movies(data, "ml-100k")
    assert list(movies) == ["10", "20", "30"]
    assert movies["10"] == ml.Movie("10", "Toy Story (1995)", ("Animation", "Comedy"), 1995)
    assert movies["20"] == ml.Movie("20", "Café Society", ("Drama",), 1997)  # latin-1, date year
    assert movies["30"].release_year == 0

    users = ml.read_users(data, "ml-100k")
    assert users["1"] == ml.User("1", 24, "M", "technician", "85711")
    assert len(users) == 2

    ratings = list(ml.iter_ratings(data, "ml-100k"))
    assert ratings[0] == ml.Rating("1", "10", 5.0, 881250949)
    assert [r.rating for r in ratings] == [5.0, 3.0, 1.0]


def test_ml100k_without_genre_file_uses_standard_genres(tmp_path):
    data = write_100k(tmp_path, with_genre_file=False)
    assert ml.read_movies(data, "ml-100k")["10"].genres == ("Animation", "Comedy")


def test_reads_ml1m(tmp_path):
    data = write_1m(tmp_path)
    movies = ml.read_movies(data, "ml-1m")
    assert movies["661"].genres == ("Animation", "Children's", "Musical")
    assert movies["661"].release_year == 1996  # year followed by a space
    assert movies["1193"].title == "One Flew Over the Cuckoo's Nest (1975)"
    assert movies["5"] == ml.Movie("5", "Amélie", ("Comedy", "Romance"), 0)

    users = ml.read_users(data, "ml-1m")
    assert users["1"] == ml.User("1", 1, "F", "K-12 student", "48067")
    assert users["2"].occupation == "self-employed"
    assert users["3"].occupation == "writer"

    assert list(ml.iter_ratings(data, "ml-1m")) == [
        ml.Rating("1", "1193", 5.0, 978300760),
        ml.Rating("2", "661", 3.0, 978302109),
    ]


def test_reads_ml_latest(tmp_path):
    data = write_latest(tmp_path)
    movies = ml.read_movies(data, "ml-latest")
    assert movies["3"] == ml.Movie(
        "3", "American President, The (1995)", ("Comedy", "Drama", "Romance"), 1995
    )
    assert movies["4"] == ml.Movie("4", 'The "Quoted" Film (2010)', (), 2010)
    assert movies["5"].title == "Pokémon Heroes (2003)"
    assert ml.read_users(data, "ml-latest") == {}

    ratings = list(ml.iter_ratings(data, "ml-latest"))
    assert [r.rating for r in ratings] == [4.0, 0.5, 3.5]
    assert ratings[2].timestamp == 1445714835  # milliseconds converted to seconds


def test_iter_ratings_streams(tmp_path):
    data = write_100k(tmp_path)
    with open(data / "u.data", "a") as f:
        f.write("1\t10\tbad\t0\n")
    ratings = ml.iter_ratings(data, "ml-100k")
    assert next(ratings) == ml.Rating("1", "10", 5.0, 881250949)  # yields before the bad line


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, expected",
    [
        (
            "1\t10\t5\t881250949\n1 20 4 881250950\n",
            "u.data line 2: expected 4 tab-separated fields, got 1",
        ),
        ("1,10,5,881250949\n", "u.data line 1: expected 4 tab-separated fields, got 1"),
        (
            "user_id\titem_id\trating\ttimestamp\n1\t10\t5\t1\n",
            "u.data line 1: rating 'rating' is not a number",
        ),
        ("1\t10\t5\t1\n\n1\t10\t7\t1\n", "u.data line 3: rating '7' outside 1..5"),
        ("1\t10\t0\t1\n", "u.data line 1: rating '0' outside 1..5"),
        ("1\t10\t3.5\t1\n", "u.data line 1: rating '3.5' is not a whole number"),
        ("1\t10\tfour\t1\n", "u.data line 1: rating 'four' is not a number"),
        ("1\t10\t4\tyesterday\n", "u.data line 1: timestamp 'yesterday'"),
        ("1\t10\t4\t-5\n", "u.data line 1: timestamp '-5'"),
        ("\t10\t4\t1\n", "u.data line 1: empty user id"),
        ("1\t \t4\t1\n", "u.data line 1: empty movie id"),
        ("", "u.data is empty"),
        ("\n\n", "u.data is empty"),
    ],
)
def test_bad_ml100k_ratings(tmp_path, content, expected):
    data = write_100k(tmp_path)
    (data / "u.data").write_text(content)
    raises_data_error(ml.iter_ratings, data, "ml-100k", match=expected)


def test_ml100k_accepts_integral_float_ratings(tmp_path):
    data = write_100k(tmp_path)
    (data / "u.data").write_text("1\t10\t4.0\t1\n")
    assert [r.rating for r in ml.iter_ratings(data, "ml-100k")] == [4.0]


def test_missing_ratings_file_fails_at_call(tmp_path):
    data = write_1m(tmp_path)
    (data / "ratings.dat").unlink()
    with pytest.raises(ml.DataError, match=r"^missing ratings\.dat in "):
        ml.iter_ratings(data, "ml-1m")


@pytest.mark.parametrize(
    "content, expected",
    [
        (
            "1::1193::5::978300760\n1\t1193\t5\t978300760\n",
            "ratings.dat line 2: expected 4 '::'-separated fields, got 1",
        ),
        ("1::1193::6::978300760\n", "ratings.dat line 1: rating '6' outside 1..5"),
    ],
)
def test_bad_ml1m_ratings(tmp_path, content, expected):
    data = write_1m(tmp_path)
    (data / "ratings.dat").write_text(content)
    raises_data_error(ml.iter_ratings, data, "ml-1m", match=expected)


@pytest.mark.parametrize(
    "content, expected",
    [
        ("1,1,4.0,964982703\n", "ratings.csv line 1: expected header"),
        (
            "userId,movieId,rating,timestamp\n1,1,0.25,1\n",
            "ratings.csv line 2: rating '0.25' is not a multiple of 0.5",
        ),
        (
            "userId,movieId,rating,timestamp\n1,1,5.5,1\n",
            "ratings.csv line 2: rating '5.5' outside 0.5..5",
        ),
        (
            "userId,movieId,rating,timestamp\n1,1,0,1\n",
            "ratings.csv line 2: rating '0' outside 0.5..5",
        ),
        (
            "userId,movieId,rating,timestamp\n1;1;4.0;1\n",
            "ratings.csv line 2: expected 4 comma-separated fields, got 1",
        ),
        ("userId,movieId,rating,timestamp\n", "ratings.csv is empty"),
        ("", "ratings.csv is empty"),
    ],
)
def test_bad_ml_latest_ratings(tmp_path, content, expected):
    data = write_latest(tmp_path)
    (data / "ratings.csv").write_text(content)
    raises_data_error(ml.iter_ratings, data, "ml-latest", match=expected)


def test_bad_catalog_and_user_lines(tmp_path):
    data = write_100k(tmp_path / "100k")
    with open(data / "u.item", "a") as f:
        f.write("40|Too few fields|\n")
    raises_data_error(
        ml.read_movies,
        data,
        "ml-100k",
        match="u.item line 5: expected 24 '|'-separated fields, got 3",
    )

    with open(data / "u.user", "a") as f:
        f.write("3|old|M|writer|12345\n")
    raises_data_error(ml.read_users, data, "ml-100k", match="u.user line 3: age 'old'")

    data = write_1m(tmp_path / "1m")
    (data / "users.dat").write_text("1::F::1::10::48067\n2::M::56::21::70072\n")
    raises_data_error(ml.read_users, data, "ml-1m", match="users.dat line 2: occupation code '21'")
    (data / "movies.dat").write_text("1::Title only\n")
    raises_data_error(ml.read_movies, data, "ml-1m", match="movies.dat line 1: expected 3")

    data = write_latest(tmp_path / "latest")
    (data / "movies.csv").write_text("id,name,genres\n1,A,B\n")
    raises_data_error(ml.read_movies, data, "ml-latest", match="movies.csv line 1: expected header")


def test_missing_catalog_and_unknown_layout(tmp_path):
    data = write_1m(tmp_path)
    (data / "users.dat").unlink()
    raises_data_error(ml.read_users, data, "ml-1m", match="missing users.dat in")
    raises_data_error(ml.read_movies, data, "ml-2m", match="unknown MovieLens layout 'ml-2m'")


# --- fingerprint --------------------------------------------------------------------------


def test_fingerprint_is_stable_and_tracks_changes(tmp_path):
    data = write_100k(tmp_path)
    first = ml.fingerprint(data)
    assert first == ml.fingerprint(str(data))
    assert int(first, 16) >= 0

    (tmp_path / "notes.txt").write_text("not a MovieLens file")
    assert ml.fingerprint(data) == first

    with open(data / "u.data", "a") as f:
        f.write("2\t10\t4\t891717743\n")
    second = ml.fingerprint(data)
    assert second != first

    stat = (data / "u.user").stat()
    os.utime(data / "u.user", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert ml.fingerprint(data) != second  # same size, new modification time


# --- fetch_dataset ------------------------------------------------------------------------


def build_zip(directory: pathlib.Path, name: str = "ml-100k") -> pathlib.Path:
    """Writes ``directory/name.zip`` holding a top-level ``name/`` folder like GroupLens's."""
    source = write_100k(directory / "source" / name)
    archive = directory / f"{name}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(f"{name}/README", "tiny")
        for path in sorted(source.iterdir()):
            zf.write(path, f"{name}/{path.name}")
    return archive


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@pytest.fixture
def http_server(tmp_path, monkeypatch):
    """Serves ``tmp_path/served`` on an ephemeral 127.0.0.1 port; yields (base_url, stop)."""
    for variable in (
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stopped = []

    def stop():
        if not stopped:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            stopped.append(True)

    yield f"http://127.0.0.1:{server.server_address[1]}", served, stop
    stop()


def test_fetch_from_file_url(tmp_path):
    archive = build_zip(tmp_path / "remote")
    cache = tmp_path / "cache"
    path = ml.fetch_dataset("ml-100k", cache_dir=cache, base_url=archive.parent.as_uri())
    assert path == cache / "ml-100k"
    assert ml.detect_layout(path) == "ml-100k"
    assert (path / "README").read_text() == "tiny"
    assert ml.read_movies(path, "ml-100k")["20"].title == "Café Society"
    assert sorted(p.name for p in cache.iterdir()) == ["ml-100k"]  # no temporary leftovers


def test_fetch_from_http_then_from_cache(tmp_path, http_server):
    base_url, served, stop = http_server
    build_zip(served)
    cache = tmp_path / "cache"
    path = ml.fetch_dataset("ml-100k", cache_dir=cache, base_url=base_url + "/")
    assert len(list(ml.iter_ratings(path, "ml-100k"))) == 3

    stop()
    assert ml.fetch_dataset("ml-100k", cache_dir=cache, base_url=base_url) == path


def test_fetch_404_leaves_nothing(tmp_path, http_server):
    base_url, served, _ = http_server
    build_zip(served)  # only ml-100k is served
    cache = tmp_path / "cache"
    message = raises_data_error(
        ml.fetch_dataset, "ml-1m", cache, base_url, match=f"{base_url}/ml-1m.zip"
    )
    assert "404" in message
    assert not (cache / "ml-1m").exists()
    assert not cache.exists() or list(cache.iterdir()) == []


def test_fetch_uses_environment_defaults(tmp_path, monkeypatch):
    archive = build_zip(tmp_path / "remote")
    monkeypatch.setenv("MOVIEREC_CACHE", str(tmp_path / "env-cache"))
    monkeypatch.setenv("MOVIEREC_DATA_URL", archive.parent.as_uri())
    assert ml.fetch_dataset() == tmp_path / "env-cache" / "ml-100k"


def test_fetch_refuses_unsafe_archives_and_unknown_names(tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    with zipfile.ZipFile(remote / "ml-100k.zip", "w") as zf:
        zf.writestr("ml-100k/u.data", "1\t1\t1\t1\n")
        zf.writestr("ml-100k/u.item", f"1|A|||u|{_flags('Drama')}\n")
        zf.writestr("../escaped.txt", "outside")
    cache = tmp_path / "cache"
    raises_data_error(
        ml.fetch_dataset, "ml-100k", cache, remote.as_uri(), match="unsafe path '../escaped.txt'"
    )
    assert not (tmp_path / "escaped.txt").exists()
    assert list(cache.iterdir()) == []

    (remote / "ml-1m.zip").write_bytes(b"not a zip")
    raises_data_error(
        ml.fetch_dataset, "ml-1m", cache, remote.as_uri(), match="not a valid zip archive"
    )
    assert list(cache.iterdir()) == []

    raises_data_error(
        ml.fetch_dataset, "ml-2m", cache, remote.as_uri(), match="unknown MovieLens dataset 'ml-2m'"
    )

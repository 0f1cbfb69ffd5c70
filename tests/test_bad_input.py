"""Bad input, case by case, on tiny MovieLens directories written here and then corrupted.

Every case is either handled (the test checks what is read) or stops with one line naming
the file and line (or the feature). Reader-level checks are fast and cover the three
layouts; a representative subset also goes through the real `movierec run` against an
output directory that already holds a pushed model, which must stay byte-identical.
test_pipeline_e2e.py already drives an out-of-range rating, a comma-delimited u.data, a
missing u.item and an unknown occupation through the CLI; they are not repeated here.
"""

import dataclasses
import os
import pathlib
import tracemalloc

import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from components.movielens_example_gen import executor, synth
from components.movielens_example_gen import movielens as ml
from pipeline import cli, configs
from trainer import features as F
from conftest import serving_snapshot

FAST = ["--epochs", "3", "--batch-size", "256", "--rmse-upper-bound", "2.0"]
# The module's one good run only has to push some model: a smaller graph trains in half
# the time (no user history, rating head on the retrieval towers).
FAST_MODEL = [*FAST, "--hparam", "history_len=0", "--hparam", "rating_tower=shared"]
HUGE_LINE_BYTES = 50 << 20
# Where the ratings begin: ml-latest's first line is its header.
FIRST = {"ml-100k": 1, "ml-1m": 1, "ml-latest": 2}
SEPARATOR = {"ml-100k": "\t", "ml-1m": "::", "ml-latest": ","}
FIELD = {"user": 0, "movie": 1, "rating": 2, "timestamp": 3}


# --- writing and corrupting -----------------------------------------------------------------


def write_ml1m(directory, data: synth.SynthData) -> pathlib.Path:
    """ratings.dat / movies.dat / users.dat, as GroupLens ships ml-1m (synth has no writer)."""
    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "movies.dat", "w", encoding="latin-1") as f:
        for m in data.movies:
            f.write(f"{m.movie_id}::{m.title}::{'|'.join(m.genres)}\n")
    with open(d / "users.dat", "w") as f:
        for u in data.users:
            code = int(u.user_id) % len(ml.ML1M_OCCUPATIONS)
            f.write(f"{u.user_id}::{u.gender}::{u.age}::{code}::{u.zip_code}\n")
    with open(d / "ratings.dat", "w") as f:
        for r in data.ratings:
            f.write(f"{data.users[r['user']].user_id}::{data.movies[r['movie']].movie_id}::"
                    f"{int(r['rating'])}::{r['timestamp']}\n")
    return d


WRITERS = {"ml-100k": synth.write_ml100k, "ml-1m": write_ml1m,
           "ml-latest": synth.write_ml_latest}


def files(layout):
    return ml.layout_files(layout)


def lines_of(path):
    return path.read_bytes().decode("utf-8").splitlines()


def write_lines(path, lines, encoding="utf-8"):
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))


def edit_rating(d, layout, line, **values):
    """Sets fields (user, movie, rating, timestamp) of ratings file line `line` (1-based)."""
    path = d / files(layout)["ratings"]
    lines = lines_of(path)
    fields = lines[line - 1].split(SEPARATOR[layout])
    for name, value in values.items():
        fields[FIELD[name]] = str(value)
    lines[line - 1] = SEPARATOR[layout].join(fields)
    write_lines(path, lines)


def set_field(line, separator, index, value):
    fields = line.split(separator)
    fields[index] = value
    return separator.join(fields)


def edit_line(path, line, function):
    lines = lines_of(path)
    lines[line - 1] = function(lines[line - 1])
    write_lines(path, lines)


def insert_line(path, line, text):
    lines = lines_of(path)
    lines.insert(line - 1, text)
    write_lines(path, lines)


def write_huge_line(path, keep_lines):
    """Keeps the first `keep_lines` lines of `path`, then one 50 MB line without a newline."""
    lines = lines_of(path)[:keep_lines]
    chunk = b"7" * (1 << 20)
    with open(path, "wb") as f:
        f.write(("\n".join(lines) + "\n").encode())
        for _ in range(HUGE_LINE_BYTES // len(chunk)):
            f.write(chunk)


def read_everything(d):
    """The full pipeline read, as ExampleGen streams it: every rating parsed and joined."""
    return sum(1 for _ in executor.rating_examples(str(d)))


def check_message(message, expected, d, prefix=""):
    """`expected` (with "{d}" for the directory) is the whole message, or a tuple: how it
    begins, then parts it contains. `prefix` goes before it (the CLI's "movierec: error: "),
    and a " (full log: ...)" may follow it (errors from inside the pipeline)."""
    assert "\n" not in message
    first, *others = [part.format(d=d) for part in (
        expected if isinstance(expected, tuple) else (expected,))]
    assert message.startswith(prefix + first), message
    if isinstance(expected, str):
        assert message == prefix + first or message.startswith(
            f"{prefix}{first} (full log: "), message
    assert all(part in message for part in others), message


def error_of(function, *args) -> str:
    with pytest.raises(ml.DataError) as info:
        function(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture
def write(tmp_path, synth_data):
    def write(layout, name="data", data=None):
        return WRITERS[layout](tmp_path / name, data or synth_data)
    return write


# --- the error cases ------------------------------------------------------------------------
# id -> (layout, corrupt(d), the message: see check_message)


def _header_100k_item(d):
    insert_line(d / "u.item", 1, "movie id|movie title|release date|video release date|"
                "IMDb URL|" + "|".join(ml.ML100K_GENRES))


def _new_genre_without_flags(d):
    with open(d / "u.genre", "a") as f:
        f.write(f"Superhero|{len(ml.ML100K_GENRES)}\n")


def _semicolons(d):
    path = d / "ratings.csv"
    write_lines(path, [line.replace(",", ";") for line in lines_of(path)])


ERRORS = {
    # missing and empty files
    "100k-missing-ratings": ("ml-100k", lambda d: os.remove(d / "u.data"),
                             "no MovieLens files in {d}: missing u.data next to u.item "
                             "(ml-100k layout)"),
    "1m-missing-ratings": ("ml-1m", lambda d: os.remove(d / "ratings.dat"),
                           "no MovieLens files in {d}: missing ratings.dat next to "
                           "movies.dat (ml-1m layout)"),
    "latest-missing-ratings": ("ml-latest", lambda d: os.remove(d / "ratings.csv"),
                               "no MovieLens files in {d}: missing ratings.csv next to "
                               "movies.csv (ml-latest layout)"),
    "100k-missing-users": ("ml-100k", lambda d: os.remove(d / "u.user"),
                           "missing u.user in {d}"),
    "100k-empty-ratings": ("ml-100k", lambda d: (d / "u.data").write_bytes(b""),
                           "u.data is empty"),
    "100k-blank-ratings": ("ml-100k", lambda d: (d / "u.data").write_text("\n \n\n"),
                           "u.data is empty"),
    "1m-empty-ratings": ("ml-1m", lambda d: (d / "ratings.dat").write_bytes(b""),
                         "ratings.dat is empty"),
    "latest-empty-ratings": ("ml-latest", lambda d: (d / "ratings.csv").write_bytes(b""),
                             "ratings.csv is empty"),
    "latest-header-only": ("ml-latest",
                           lambda d: (d / "ratings.csv").write_text(
                               "userId,movieId,rating,timestamp\n"),
                           "ratings.csv is empty (header only)"),
    "100k-empty-users": ("ml-100k", lambda d: (d / "u.user").write_bytes(b""),
                         "u.user is empty"),
    # wrong delimiter (a comma-separated u.data is in test_pipeline_e2e)
    "100k-semicolon-line": ("ml-100k",
                            lambda d: edit_line(d / "u.data", 8, lambda s: s.replace("\t", ";")),
                            "u.data line 8: expected 4 tab-separated fields, got 1 "
                            "(the line is ';'-separated)"),
    "100k-tab-item": ("ml-100k",
                      lambda d: edit_line(d / "u.item", 1, lambda s: s.replace("|", "\t")),
                      "u.item line 1: expected 24 '|'-separated fields, got 1 "
                      "(the line is tab-separated)"),
    "1m-tab-line": ("ml-1m",
                    lambda d: edit_line(d / "ratings.dat", 8, lambda s: s.replace("::", "\t")),
                    "ratings.dat line 8: expected 4 '::'-separated fields, got 1 "
                    "(the line is tab-separated)"),
    "1m-single-colon": ("ml-1m",
                        lambda d: edit_line(d / "ratings.dat", 8,
                                            lambda s: s.replace("::", ":")),
                        "ratings.dat line 8: expected 4 '::'-separated fields, got 1 "
                        "(the line is ':'-separated)"),
    "latest-semicolons": ("ml-latest", _semicolons,
                          "ratings.csv line 1: expected header 'userid,movieid,rating,"
                          "timestamp' (any case), got 'userId;movieId;rating;timestamp' "
                          "(the line is ';'-separated)"),
    # non-numeric ids
    "100k-user-id-text": ("ml-100k", lambda d: edit_rating(d, "ml-100k", 8, user="u17"),
                          "u.data line 8: user id 'u17' is not a non-negative integer"),
    "100k-movie-id-text": ("ml-100k",
                           lambda d: edit_rating(d, "ml-100k", 8, movie="tt0114709"),
                           "u.data line 8: movie id 'tt0114709' is not a non-negative "
                           "integer"),
    "100k-item-id-text": ("ml-100k",
                          lambda d: edit_line(d / "u.item", 3, lambda s: "M" + s),
                          "u.item line 3: movie id 'M3' is not a non-negative integer"),
    "100k-user-file-id-text": ("ml-100k",
                               lambda d: edit_line(d / "u.user", 2, lambda s: "bob" + s),
                               "u.user line 2: user id 'bob2' is not a non-negative integer"),
    "1m-negative-user-id": ("ml-1m", lambda d: edit_rating(d, "ml-1m", 8, user="-4"),
                            "ratings.dat line 8: user id '-4' is not a non-negative integer"),
    "latest-movie-id-float": ("ml-latest",
                              lambda d: edit_rating(d, "ml-latest", 9, movie="3.0"),
                              "ratings.csv line 9: movie id '3.0' is not a non-negative "
                              "integer"),
    # ratings outside the layout's range or grid (u.data's '9' is in test_pipeline_e2e)
    "100k-rating-zero": ("ml-100k", lambda d: edit_rating(d, "ml-100k", 8, rating="0"),
                         "u.data line 8: rating '0' outside 1..5"),
    "100k-half-star": ("ml-100k", lambda d: edit_rating(d, "ml-100k", 8, rating="3.5"),
                       "u.data line 8: rating '3.5' is not a whole number"),
    "1m-rating-six": ("ml-1m", lambda d: edit_rating(d, "ml-1m", 8, rating="6"),
                      "ratings.dat line 8: rating '6' outside 1..5"),
    "latest-rating-above": ("ml-latest", lambda d: edit_rating(d, "ml-latest", 9, rating="5.5"),
                            "ratings.csv line 9: rating '5.5' outside 0.5..5"),
    "latest-rating-zero": ("ml-latest", lambda d: edit_rating(d, "ml-latest", 9, rating="0.0"),
                           "ratings.csv line 9: rating '0.0' outside 0.5..5"),
    "latest-quarter-star": ("ml-latest",
                            lambda d: edit_rating(d, "ml-latest", 9, rating="3.25"),
                            "ratings.csv line 9: rating '3.25' is not a multiple of 0.5"),
    "latest-rating-nan": ("ml-latest", lambda d: edit_rating(d, "ml-latest", 9, rating="nan"),
                          "ratings.csv line 9: rating 'nan' is not a number"),
    # timestamps: milliseconds are converted (see below); microseconds are refused
    "100k-microseconds": ("ml-100k",
                          lambda d: edit_rating(d, "ml-100k", 8, timestamp=1445714835000000),
                          "u.data line 8: timestamp '1445714835000000' is neither seconds "
                          "nor milliseconds since 1970"),
    # a header line where none belongs (and a repeated one where one does)
    "100k-header-ratings": ("ml-100k",
                            lambda d: insert_line(d / "u.data", 1,
                                                  "user_id\titem_id\trating\ttimestamp"),
                            "u.data line 1: rating 'rating' is not a number "
                            "(a header line? u.data has none)"),
    "100k-header-item": ("ml-100k", _header_100k_item,
                         ("u.item line 1: genre flags must be 0 or 1, got \"unknown|Action|",
                          "(a header line? u.item has none)")),
    "100k-header-user": ("ml-100k",
                         lambda d: insert_line(d / "u.user", 1,
                                               "user id|age|gender|occupation|zip code"),
                         "u.user line 1: age 'age' is not a non-negative integer "
                         "(a header line? u.user has none)"),
    "1m-header-ratings": ("ml-1m",
                          lambda d: insert_line(d / "ratings.dat", 1,
                                                "UserID::MovieID::Rating::Timestamp"),
                          "ratings.dat line 1: rating 'Rating' is not a number "
                          "(a header line? ratings.dat has none)"),
    "latest-no-header": ("ml-latest",
                         lambda d: write_lines(d / "ratings.csv",
                                               lines_of(d / "ratings.csv")[1:]),
                         ("ratings.csv line 1: expected header 'userid,movieid,rating,"
                          "timestamp' (any case), got '",)),
    "latest-repeated-header": ("ml-latest",
                               lambda d: insert_line(d / "ratings.csv", 9,
                                                     "userId,movieId,rating,timestamp"),
                               "ratings.csv line 9: rating 'rating' is not a number "
                               "(a repeated header line?)"),
    # ratings of movies missing from the catalog, of users missing from the user file
    "100k-unknown-movie": ("ml-100k", lambda d: edit_rating(d, "ml-100k", 8, movie="999"),
                           ("u.data line 8: movie '999' (rated by user '",
                            "') is not in u.item")),
    "100k-unknown-movie-late": ("ml-100k",
                                lambda d: edit_rating(d, "ml-100k", 2000, movie="999"),
                                ("u.data line 2000: movie '999' (rated by user '",
                                 "') is not in u.item")),
    "100k-unknown-user": ("ml-100k", lambda d: edit_rating(d, "ml-100k", 8, user="999"),
                          "u.data line 8: user '999' is not in u.user"),
    "1m-unknown-movie": ("ml-1m", lambda d: edit_rating(d, "ml-1m", 8, movie="999"),
                         ("ratings.dat line 8: movie '999' (rated by user '",
                          "') is not in movies.dat")),
    "1m-unknown-user": ("ml-1m", lambda d: edit_rating(d, "ml-1m", 8, user="999"),
                        "ratings.dat line 8: user '999' is not in users.dat"),
    "latest-unknown-movie": ("ml-latest", lambda d: edit_rating(d, "ml-latest", 9, movie="999"),
                             ("ratings.csv line 9: movie '999' (rated by user '",
                              "') is not in movies.csv")),
    # schema drift the reader itself can see
    "100k-genre-without-flag": ("ml-100k", _new_genre_without_flags,
                                "u.item line 1: expected 25 '|'-separated fields, got 24 "
                                "(5 fields and a 0/1 flag for each of the 20 genres)"),
    "1m-new-occupation-code": ("ml-1m",
                               lambda d: edit_line(d / "users.dat", 2,
                                                   lambda s: set_field(s, "::", 3, "21")),
                               "users.dat line 2: occupation code '21' outside 0..20"),
    # a 50 MB line without a newline
    "100k-huge-line": ("ml-100k", lambda d: write_huge_line(d / "u.data", 7),
                       f"u.data line 8: longer than {ml.MAX_LINE_BYTES} bytes"
                       " (not a MovieLens file?)"),
    "1m-huge-line": ("ml-1m", lambda d: write_huge_line(d / "movies.dat", 2),
                     f"movies.dat line 3: longer than {ml.MAX_LINE_BYTES} bytes"
                     " (not a MovieLens file?)"),
    "latest-huge-line": ("ml-latest", lambda d: write_huge_line(d / "movies.csv", 2),
                         f"movies.csv line 3: longer than {ml.MAX_LINE_BYTES} bytes"
                         " (not a MovieLens file?)"),
}
# Past the first PREFLIGHT_LINES ratings: found while the ratings stream, not before.
LATE = {"100k-unknown-movie-late"}
assert 2000 > ml.PREFLIGHT_LINES


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_reader_stops_with_one_line(case, write):
    layout, corrupt, expected = ERRORS[case]
    d = write(layout)
    corrupt(d)
    try:
        streamed = error_of(read_everything, d)
        check_message(streamed, expected, d)
        if case in LATE:  # the pre-flight reads only the first lines...
            assert ml.preflight(d) == layout
        else:  # ... and stops every other case, with the same message
            assert error_of(ml.preflight, d) == streamed
    finally:
        for big in d.iterdir():  # do not leave 50 MB files behind
            if big.stat().st_size > HUGE_LINE_BYTES // 2:
                big.unlink()


@pytest.mark.parametrize("layout, name, keep", [("ml-100k", "u.data", 7),
                                                ("ml-1m", "movies.dat", 2),
                                                ("ml-latest", "movies.csv", 2)])
def test_a_huge_line_is_refused_in_bounded_memory(layout, name, keep, write):
    d = write(layout)
    write_huge_line(d / name, keep)
    read = (lambda: list(ml.iter_ratings(d))) if name == files(layout)["ratings"] else (
        lambda: ml.read_movies(d))
    tracemalloc.start()
    try:
        message = error_of(read)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        (d / name).unlink()
    assert message.startswith(f"{name} line {keep + 1}: longer than {ml.MAX_LINE_BYTES} bytes")
    assert peak < 4 * ml.MAX_LINE_BYTES + (1 << 20), peak  # not the line's 50 MB


# --- the handled cases ----------------------------------------------------------------------


@pytest.mark.parametrize("layout", ml.LAYOUTS)
def test_millisecond_timestamps_are_converted_line_by_line(layout, write):
    good = list(ml.iter_ratings(write(layout, "seconds")))
    d = write(layout, "milliseconds")
    path = d / files(layout)["ratings"]
    lines = lines_of(path)
    for i in range(FIRST[layout] - 1, len(lines), 3):  # every third line: a mixed file
        fields = lines[i].split(SEPARATOR[layout])
        fields[3] = str(int(fields[3]) * 1000 + 999)
        lines[i] = SEPARATOR[layout].join(fields)
    write_lines(path, lines)
    stamps = [int(line.rsplit(SEPARATOR[layout], 1)[1]) for line in lines[FIRST[layout] - 1:]]
    assert 0 < sum(t > 10**11 for t in stamps) < len(stamps)  # both units
    assert list(ml.iter_ratings(d)) == good
    assert max(r.timestamp for r in good) < 10**11


def test_utf8_and_latin1_catalogs_read_the_same(tmp_path, synth_data):
    """Each line is decoded as utf-8, else latin-1: a catalog in either encoding reads right,
    whatever its layout ships (latin-1 for ml-100k/ml-1m, utf-8 for ml-latest)."""
    accented = ("Amélie", "Señor Ñandú", "Crème brûlée")
    movies = [dataclasses.replace(m, title=f"{accented[i % 3]} {m.title}") if i < 9 else m
              for i, m in enumerate(synth_data.movies)]
    data = dataclasses.replace(synth_data, movies=movies)
    expected = {m.movie_id: m.title for m in movies}
    for layout in ml.LAYOUTS:
        name = files(layout)["movies"]
        shipped, other = ("utf-8", "latin-1") if layout == "ml-latest" else ("latin-1", "utf-8")
        native = WRITERS[layout](tmp_path / layout / "native", data)
        recoded = WRITERS[layout](tmp_path / layout / "recoded", data)
        path = recoded / name
        path.write_bytes(path.read_bytes().decode(shipped).encode(other))
        assert "Amélie".encode(shipped) in (native / name).read_bytes()
        assert "Amélie".encode(other) in path.read_bytes()
        for d in (native, recoded):
            assert {i: m.title for i, m in ml.read_movies(d).items()} == expected, d

    # characters latin-1 does not have, in a utf-8 u.item
    d = tmp_path / "ml-100k" / "recoded"
    edit_line(d / "u.item", 1, lambda s: s.replace("Amélie", "Cœur ★"))
    assert ml.read_movies(d)["1"].title.startswith("Cœur ★ ")

    # utf-8 with a byte-order mark (as Excel saves csv) before the header
    d = synth.write_ml_latest(tmp_path / "bom", data)
    for name in ("movies.csv", "ratings.csv"):
        (d / name).write_bytes(b"\xef\xbb\xbf" + (d / name).read_bytes())
    assert {i: m.title for i, m in ml.read_movies(d).items()} == expected
    assert len(list(ml.iter_ratings(d))) == len(synth_data.ratings)


def test_crlf_line_endings_read_the_same(write):
    d = write("ml-100k")
    expected = list(ml.iter_ratings(d)), ml.read_movies(d), ml.read_users(d)
    for name in ("u.data", "u.item", "u.user", "u.genre"):
        (d / name).write_bytes((d / name).read_bytes().replace(b"\n", b"\r\n"))
    assert (list(ml.iter_ratings(d)), ml.read_movies(d), ml.read_users(d)) == expected


def test_ml_latest_has_no_user_file_so_any_user_is_taken(write):
    d = write("ml-latest")
    edit_rating(d, "ml-latest", 9, user="999999")
    examples = [tf.train.Example.FromString(e) for e in executor.rating_examples(str(d))]
    new_user = [e for e in examples
                if e.features.feature[F.USER_ID].bytes_list.value == [b"999999"]]
    assert len(new_user) == 1
    assert new_user[0].features.feature[F.USER_OCCUPATION].bytes_list.value == [b""]


def _schema_values(layout, feature):
    """The curated schema's allowed values of `feature`, None when any value passes."""
    schema = text_format.Parse(pathlib.Path(configs.PipelineConfig(
        "", "", layout=layout).schema_file).read_text(), schema_pb2.Schema())
    domain = next(f for f in schema.feature if f.name == feature).domain
    if not domain:
        return None
    return set(next(d for d in schema.string_domain if d.name == domain).value)


def _add_genre_100k(d, genre):
    """u.genre gets `genre`; u.item a flag column for it, set for movie 1 only."""
    with open(d / "u.genre", "a") as f:
        f.write(f"{genre}|{len(ml.ML100K_GENRES)}\n")
    lines = lines_of(d / "u.item")
    write_lines(d / "u.item", [line + ("|1" if i == 0 else "|0")
                               for i, line in enumerate(lines)], "latin-1")


def test_schema_drift_is_read_and_left_to_the_schema(write, synth_data):
    """A new genre or occupation parses; the curated schema then decides: ml-100k and ml-1m
    list their genres and occupations (SchemaGate stops the run, see the CLI test below and
    test_pipeline_e2e's occupation), ml-latest's genres are open (they grow over time)."""
    d = write("ml-100k", "100k")
    _add_genre_100k(d, "Superhero")
    movie = ml.read_movies(d)["1"]
    assert movie.genres[-1] == "Superhero" and len(movie.genres) >= 2
    assert all("Superhero" not in m.genres for i, m in ml.read_movies(d).items() if i != "1")
    edit_line(d / "u.user", 1, lambda s: set_field(s, "|", 3, "astronaut"))
    assert ml.read_users(d)["1"].occupation == "astronaut"
    assert "Superhero" not in _schema_values("ml-100k", F.MOVIE_GENRES)
    assert "astronaut" not in _schema_values("ml-100k", F.USER_OCCUPATION)

    d = write("ml-1m", "1m")
    edit_line(d / "movies.dat", 1, lambda s: s + "|Superhero")
    assert ml.read_movies(d)["1"].genres[-1] == "Superhero"
    assert "Superhero" not in _schema_values("ml-1m", F.MOVIE_GENRES)

    d = write("ml-latest", "latest")
    edit_line(d / "movies.csv", 2, lambda s: s + "|Superhero")
    assert ml.read_movies(d)["1"].genres[-1] == "Superhero"
    assert _schema_values("ml-latest", F.MOVIE_GENRES) is None
    assert sum(1 for _ in executor.rating_examples(str(d))) == len(synth_data.ratings)


# --- through the CLI ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, synth_data):
    """(data dir, output dir) after one good run that pushed a model. The good data has
    utf-8 accented titles in u.item and a third of u.data in milliseconds, both handled."""
    data = dataclasses.replace(synth_data, movies=[
        dataclasses.replace(m, title=f"Amélie Señor {m.title}") if i < 5 else m
        for i, m in enumerate(synth_data.movies)])
    d = synth.write_ml100k(tmp_path_factory.mktemp("good") / "ml-100k", data)
    item = d / "u.item"
    item.write_bytes(item.read_bytes().decode("latin-1").encode("utf-8"))
    lines = lines_of(d / "u.data")
    for i in range(0, len(lines), 3):
        fields = lines[i].split("\t")
        lines[i] = "\t".join(fields[:3] + [str(int(fields[3]) * 1000 + 5)])
    write_lines(d / "u.data", lines)
    out = tmp_path_factory.mktemp("run") / "output"
    rc = cli.main(["run", "--data-dir", str(d), "--output-dir", str(out), *FAST_MODEL])
    assert rc == 0
    return d, out


def _split(out, split):
    paths = sorted(pathlib.Path(out, "pipeline", "MovieLensExampleGen", "examples").glob(
        f"*/Split-{split}/*"))
    return [tf.train.Example.FromString(r.numpy()) for r in
            tf.data.TFRecordDataset([str(p) for p in paths], compression_type="GZIP")]


def test_good_run_read_utf8_titles_and_millisecond_timestamps(pushed, synth_data):
    _, out = pushed
    assert len(list((out / "serving" / "movierec").iterdir())) == 1
    titles = {e.features.feature[F.MOVIE_ID].bytes_list.value[0].decode():
              e.features.feature[F.MOVIE_TITLE].bytes_list.value[0].decode("utf-8")
              for e in _split(out, "catalog")}
    for m in synth_data.movies[:5]:
        assert titles[m.movie_id] == f"Amélie Señor {m.title}"
    stamps = sorted(e.features.feature[F.TIMESTAMP].int64_list.value[0]
                    for split in ("train", "eval") for e in _split(out, split))
    assert stamps == sorted(int(t) for t in synth_data.ratings["timestamp"])


CLI_CASES = ["100k-missing-ratings", "100k-empty-ratings", "100k-user-id-text",
             "100k-header-ratings", "100k-unknown-movie-late", "100k-unknown-user",
             "100k-microseconds", "100k-huge-line", "1m-rating-six", "latest-semicolons"]


def _run(capsys, d, out):
    capsys.readouterr()
    rc = cli.main(["run", "--data-dir", str(d), "--output-dir", str(out), *FAST])
    return rc, capsys.readouterr().err.strip()


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_stops_with_one_line_and_keeps_the_pushed_model(case, pushed, write, capsys):
    _, out = pushed
    before = serving_snapshot(out)
    layout, corrupt, expected = ERRORS[case]
    d = write(layout)
    corrupt(d)
    try:
        rc, err = _run(capsys, d, out)
    finally:
        for big in d.iterdir():
            if big.stat().st_size > HUGE_LINE_BYTES // 2:
                big.unlink()
    assert rc != 0
    assert len(err.splitlines()) == 1, err
    check_message(err, expected, d, prefix="movierec: error: ")
    assert serving_snapshot(out) == before


def test_cli_new_genre_stops_at_the_schema_naming_the_feature(pushed, write, capsys):
    _, out = pushed
    before = serving_snapshot(out)
    d = write("ml-100k")
    _add_genre_100k(d, "Superhero")
    rc, err = _run(capsys, d, out)
    assert rc != 0 and len(err.splitlines()) == 1, err
    assert err.startswith("movierec: error: data does not match the schema: ")
    assert "feature 'movie_genres'" in err
    assert serving_snapshot(out) == before

"""Streaming, validating reader of raw MovieLens directories (standard library only).

Three on-disk layouts are understood; :func:`detect_layout` tells them apart by the
files a directory holds.

``ml-100k``
    ``u.data``  -- ratings, tab-separated ``user_id item_id rating timestamp``, no header.
    ``u.item``  -- movies, ``|``-separated
    ``movie_id|title|release_date|video_release_date|url|`` followed by one 0/1 flag per
    genre, in the order of ``u.genre``.
    ``u.user``  -- users, ``user_id|age|gender|occupation|zip``.
    ``u.genre`` -- ``name|index`` lines; optional, the 19 standard genres are assumed
    when it is absent.
    Files are latin-1 encoded.

``ml-1m``
    ``ratings.dat`` -- ``UserID::MovieID::Rating::Timestamp``.
    ``movies.dat``  -- ``MovieID::Title::Genres`` with ``|``-joined genres.
    ``users.dat``   -- ``UserID::Gender::Age::Occupation::Zip-code``; the occupation is
    an integer code 0-20, translated to the names of the ml-1m README.
    Files are latin-1 encoded.

``ml-latest`` (also the ``ml-latest-small``, ``ml-20m`` and ``ml-25m`` downloads)
    ``ratings.csv`` -- header ``userId,movieId,rating,timestamp``; half-star ratings.
    ``movies.csv``  -- header ``movieId,title,genres``; quoted titles may contain commas
    and doubled quotes; ``|``-joined genres, ``(no genres listed)`` meaning none.
    There is no user file. Files are utf-8 encoded.

Whatever the layout, each line is decoded as utf-8 and, failing that, as latin-1, so a
file in either encoding reads correctly. Files are read line by line, never whole, and a
line longer than :data:`MAX_LINE_BYTES` is refused without being read further. Ids
(users, movies) are non-negative integers in every layout.

:func:`read_ratings` reads the ratings of a byte range of an open ratings file (the lines
that start in it), so that one file can be read by several workers; the ranges of a file
together read exactly what :func:`iter_ratings` reads.

Every problem with the input raises :class:`DataError` whose message is a single line
naming the file (and the 1-based line number where one applies), e.g.
``u.data line 3: rating '7' outside 1..5``; a range that does not start at byte 0 names the
line by its byte offset and quotes it instead. :func:`preflight` runs the cheap checks
(files present, catalog and users, the first lines of the ratings) before a pipeline starts.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import math
import os
import pathlib
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from typing import Union

from trainer import storage

PathLike = Union[str, "os.PathLike[str]"]

LAYOUTS = ("ml-100k", "ml-1m", "ml-latest")

# Dataset names that are laid out like ``ml-latest``.
_LAYOUT_ALIASES = {"ml-latest-small": "ml-latest", "ml-20m": "ml-latest", "ml-25m": "ml-latest"}

RATING_RANGE = {"ml-100k": (1.0, 5.0), "ml-1m": (1.0, 5.0), "ml-latest": (0.5, 5.0)}

#: Datasets :func:`fetch_dataset` knows how to download.
DATASETS = ("ml-100k", "ml-1m", "ml-latest-small", "ml-latest", "ml-25m", "ml-20m")

DEFAULT_BASE_URL = "https://files.grouplens.org/datasets/movielens"
DOWNLOAD_TIMEOUT_S = 60

# Per layout: (ratings file, movies file, users file or None).
_FILES = {
    "ml-100k": ("u.data", "u.item", "u.user"),
    "ml-1m": ("ratings.dat", "movies.dat", "users.dat"),
    "ml-latest": ("ratings.csv", "movies.csv", None),
}
_GENRE_FILE = "u.genre"
# Every file this module reads; these are what :func:`fingerprint` covers.
_KNOWN_FILES = tuple(
    sorted({name for files in _FILES.values() for name in files if name} | {_GENRE_FILE})
)

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip

ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer",
    "homemaker", "K-12 student", "lawyer", "programmer", "retired", "sales/marketing",
    "scientist", "self-employed", "technician/engineer", "tradesman/craftsman",
    "unemployed", "writer",
)  # fmt: skip

_RATINGS_HEADER = ("userid", "movieid", "rating", "timestamp")
_MOVIES_HEADER = ("movieid", "title", "genres")
_NO_GENRES = "(no genres listed)"
# Field separators per layout; None means comma-separated with csv quoting.
_RATINGS_SEPARATOR = {"ml-100k": "\t", "ml-1m": "::", "ml-latest": None}
_CATALOG_SEPARATOR = {"ml-100k": "|", "ml-1m": "::", "ml-latest": None}
_TITLE_YEAR = re.compile(r"\((\d{4})\)\s*$")
_RELEASE_DATE_YEAR = re.compile(r"^\d{1,2}-[A-Za-z]{3}-(\d{4})$")
# Timestamps above this are taken to be milliseconds (10**11 s is in the year 5138, 10**11
# ms is 1973-03-03); above 1000 times it they are neither seconds nor milliseconds.
_MILLISECONDS_THRESHOLD = 10**11
#: Longest line (bytes, without its newline) of any file; MovieLens lines are under 1 KB.
MAX_LINE_BYTES = 1 << 16
#: Ratings lines :func:`preflight` reads from the start of each ratings file.
PREFLIGHT_LINES = 1000


class DataError(ValueError):
    """Invalid or missing MovieLens data; the message is always a single line."""

    def __init__(self, message: object) -> None:
        super().__init__(" ".join(str(message).splitlines()))


@dataclasses.dataclass(frozen=True)
class Movie:
    movie_id: str
    title: str
    genres: tuple[str, ...]
    release_year: int  # 0 when unknown


@dataclasses.dataclass(frozen=True)
class User:
    user_id: str
    age: int
    gender: str
    occupation: str
    zip_code: str


@dataclasses.dataclass(frozen=True)
class Rating:
    user_id: str
    movie_id: str
    rating: float
    timestamp: int  # seconds since the epoch
    # 1-based line of the ratings file (0: not from a file, or from a range of it that does
    # not start at its first byte) and the byte offset where that line starts (-1: not from
    # a file); for messages, not compared.
    line: int = dataclasses.field(default=0, compare=False)
    offset: int = dataclasses.field(default=-1, compare=False)


# --- layout -------------------------------------------------------------------------------


def _layout(layout: str | None, data_dir: PathLike) -> str:
    """Validates ``layout`` (a dataset name such as ``ml-25m`` is accepted); detects if None."""
    if layout is None:
        return detect_layout(data_dir)
    layout = _LAYOUT_ALIASES.get(layout, layout)
    if layout not in LAYOUTS:
        raise DataError(
            f"unknown MovieLens layout {layout!r}: expected one of {', '.join(LAYOUTS)}"
        )
    return layout


def _layout_of(directory: pathlib.Path) -> str | None:
    for layout in LAYOUTS:
        ratings, movies, _ = _FILES[layout]
        if (directory / ratings).is_file() and (directory / movies).is_file():
            return layout
    return None


def detect_layout(data_dir: PathLike) -> str:
    """Returns which of :data:`LAYOUTS` the files in ``data_dir`` follow."""
    directory = storage.path(data_dir)
    if not directory.is_dir():
        raise DataError(f"data directory does not exist: {directory}")
    layout = _layout_of(directory)
    if layout is None:
        for candidate in LAYOUTS:  # half a layout: name the file that is missing
            ratings, movies, _ = _FILES[candidate]
            present = [name for name in (ratings, movies) if (directory / name).is_file()]
            if present:
                missing = movies if present == [ratings] else ratings
                raise DataError(
                    f"no MovieLens files in {directory}: missing {missing} next to "
                    f"{present[0]} ({candidate} layout)"
                )
        raise DataError(
            f"no MovieLens files in {directory}: expected u.data+u.item (ml-100k), "
            "ratings.dat+movies.dat (ml-1m) or ratings.csv+movies.csv (ml-latest)"
        )
    return layout


def ratings_path(data_dir: PathLike, layout: str | None = None):
    """The ratings file of ``data_dir`` (which need not exist): a pathlib.Path, or a
    storage.UriPath when ``data_dir`` is a URI."""
    return storage.path(data_dir) / _FILES[_layout(layout, data_dir)][0]


def _existing(data_dir: PathLike, name: str):
    path = storage.path(data_dir) / name
    if not path.is_file():
        raise DataError(f"missing {name} in {storage.path(data_dir)}")
    return path


# --- line reading -------------------------------------------------------------------------


class _Place:
    """Where a reader is, for messages: the line it read last, by its 1-based number when
    the reader started at the file's first byte (``number`` > 0), else by the byte offset
    where the line starts, with the line quoted (a reader that starts inside a file cannot
    know how many lines come before it without reading them)."""

    __slots__ = ("name", "number", "offset", "text")

    def __init__(self, name: str) -> None:
        self.name, self.number, self.offset, self.text = name, 0, 0, ""

    def __str__(self) -> str:
        if self.number:
            return f"{self.name} line {self.number}"
        return f"{self.name} line at byte {self.offset} ({_quote(self.text)})"


def _quote(text: str, limit: int = 80) -> str:
    text = text.rstrip("\r\n")
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _first_line_at(f, start: int, end: int | None) -> int | None:
    """The offset of the first line of binary file ``f`` that starts at ``start`` (> 0) or
    later and before ``end`` (None: the end of the file), or None when there is none: a
    line starts after a newline, so the search for one begins at ``start - 1``."""
    f.seek(start - 1)
    position = start - 1
    while end is None or position < end - 1:
        chunk = f.read(1 << 16 if end is None else min(1 << 16, end - 1 - position))
        if not chunk:
            return None
        found = chunk.find(b"\n")
        if found >= 0:
            return position + found + 1
        position += len(chunk)
    return None


def _lines(f, place: _Place, start: int = 0, end: int | None = None, claim=None) -> Iterator[str]:
    """Yields the lines of binary file ``f`` that start in bytes [``start``, ``end``), each
    decoded as utf-8, else latin-1 (so line by line, wherever a reader starts), and keeps
    ``place`` on the line last yielded.

    A line belongs to the range it starts in: one that straddles ``start`` is left to the
    range before, one that straddles ``end`` is read to its newline. ``claim(offset)``, when
    given, is asked before each line (a Beam restriction tracker's ``try_claim``, whose
    range may shrink while it reads); it says whether to read that line, a False ends the
    lines. ``end`` None reads to the end of the file.

    A line longer than :data:`MAX_LINE_BYTES` raises :class:`DataError` after reading at
    most that many bytes of it, so memory stays bounded whatever the file holds.
    """
    if claim is None:
        claim = (lambda offset: True) if end is None else (lambda offset: offset < end)
    if start > 0:
        position = _first_line_at(f, start, end)
        if position is None:
            if end is not None:
                claim(end)  # a tracker must hear that nothing of its range is left
            return
    else:
        position = 0
    f.seek(position)
    number = 1 if position == 0 else 0  # 0: unknown
    limit = MAX_LINE_BYTES + 1
    while claim(position):
        raw = f.readline(limit)
        if not raw:
            return
        place.offset, place.number = position, number
        position += len(raw)
        if len(raw) == limit and raw[-1:] != b"\n":
            place.text = raw[:200].decode("latin-1")
            raise DataError(f"{place}: longer than {MAX_LINE_BYTES} bytes (not a MovieLens file?)")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            line = raw.decode("latin-1")
        if place.offset == 0:
            line = line.removeprefix("\ufeff")
        place.text = line
        if number:
            number += 1
        yield line


def _decoded_lines(path: pathlib.Path, place: _Place | None = None) -> Iterator[str]:
    """Yields the lines of ``path`` one at a time, each decoded as utf-8, else latin-1
    (:func:`_lines` over the whole file)."""
    try:
        with path.open("rb") as f:
            yield from _lines(f, place or _Place(path.name))
    except OSError as e:
        raise DataError(f"cannot read {path.name}: {e.strerror or e}") from None


def _split_lines(lines: Iterator[str], place: _Place, separator: str | None) -> Iterator[list[str]]:
    """The stripped fields of each non-blank line; ``separator`` None means comma-separated
    values with csv quoting. ``place`` is the line (for csv: the last line of the record)."""
    if separator is None:
        reader = csv.reader(lines)
        try:
            for fields in reader:
                if any(field.strip() for field in fields):
                    yield [field.strip() for field in fields]
        except csv.Error as e:
            raise DataError(f"{place}: {e}") from None
    else:
        for line in lines:
            if line.strip():
                yield [field.strip() for field in line.rstrip("\r\n").split(separator)]


def _rows(path: pathlib.Path, separator: str | None) -> Iterator[tuple[int, list[str]]]:
    """Yields ``(line number, stripped fields)`` of the non-blank lines of ``path``.

    ``separator`` None means comma-separated values with csv quoting.
    """
    place = _Place(path.name)
    for fields in _split_lines(_decoded_lines(path, place), place, separator):
        yield place.number, fields


def _describe(separator: str | None) -> str:
    return {"\t": "tab", "|": "'|'", "::": "'::'", None: "comma"}[separator] + "-separated"


# Separators a wrongly delimited line may use, most specific first (None: whitespace).
_OTHER_SEPARATORS = {"::": "'::'", "\t": "tab", ",": "comma", ";": "';'", "|": "'|'",
                     ":": "':'", None: "space"}  # fmt: skip


def _delimiter_hint(text: str, expected: int, separator: str) -> str:
    """' (the line is comma-separated)' when ``text`` splits into ``expected`` fields on
    another separator than ``separator`` (whitespace included), else ''."""
    for other, description in _OTHER_SEPARATORS.items():
        if other != separator and len(text.split(other)) == expected:
            return f" (the line is {description}-separated)"
    return ""


def _fields_problem(fields: list[str], expected: int, separator: str | None) -> str:
    """What is wrong with a line of ``fields`` where ``expected`` fields belong."""
    hint = _delimiter_hint(fields[0], expected, separator or ",") if len(fields) == 1 else ""
    return f"expected {expected} {_describe(separator)} fields, got {len(fields)}{hint}"


def _check_fields(name: str, number: int, fields: list[str], expected: int, separator: str | None):
    if len(fields) != expected:
        raise DataError(f"{name} line {number}: {_fields_problem(fields, expected, separator)}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _header_hinted(error: DataError, name: str, fields: list[str], has_header: bool):
    """``error`` with a hint appended when the offending line looks like a header: several
    fields (one is a delimiter problem, said already), each a word, none a number."""
    if (
        len(fields) < 2
        or not all(fields)
        or not any(c.isalpha() for f in fields for c in f)
        or any(_is_number(f) for f in fields)
    ):
        return error
    hint = "a repeated header line?" if has_header else f"a header line? {name} has none"
    return DataError(f"{error} ({hint})")


def _id_problem(what: str, text: str) -> str | None:
    if not (text.isascii() and text.isdigit()):
        return f"{what} id {text!r} is not a non-negative integer"
    return None


def _check_id(where: str, what: str, text: str) -> None:
    problem = _id_problem(what, text)
    if problem:
        raise DataError(f"{where}: {problem}")


def _check_header(
    name: str, rows: Iterator[tuple[int, list[str]]], expected: tuple[str, ...]
) -> bool:
    """Consumes and checks a csv header; returns False when the file has no lines at all."""
    for number, fields in rows:
        if tuple(field.lower() for field in fields) != expected:
            hint = _delimiter_hint(fields[0], len(expected), ",") if len(fields) == 1 else ""
            raise DataError(
                f"{name} line {number}: expected header {','.join(expected)!r}"
                f" (any case), got {','.join(fields)!r}{hint}"
            )
        return True
    return False


# --- ratings ------------------------------------------------------------------------------


def iter_ratings(
    data_dir: PathLike, layout: str | None = None, file_name: str | None = None
) -> Iterator[Rating]:
    """Streams the ratings of ``data_dir``, validating every line.

    ``file_name`` reads another ratings file of the same layout instead of the default one
    (ml-100k's predefined folds ``u1.base`` ... ``u5.test``, say).

    The file is read one line at a time. Blank lines are skipped. A line raises
    :class:`DataError` (naming the file and 1-based line number) when it has the wrong
    number of fields (e.g. a wrong delimiter), an empty user or movie id, a rating that
    is not a number, not a whole star (ml-100k, ml-1m) or half star (ml-latest), or is
    outside :data:`RATING_RANGE`, a timestamp that is not a non-negative integer, or a
    user or movie id that is not a non-negative integer. A header line in ml-100k/ml-1m
    therefore fails (the message says it looks like one); ml-latest must start with its
    header. A line longer than :data:`MAX_LINE_BYTES` fails after reading that much.

    Timestamps larger than 10**11 are taken to be milliseconds and converted to seconds
    (line by line, so a file mixing both reads right); larger than 10**14 they fail.
    Each rating carries its line number (``Rating.line``) for later messages.

    A missing ratings file raises at once; an empty one raises when iteration reaches
    its end without a rating.
    """
    layout = _layout(layout, data_dir)
    path = _existing(data_dir, file_name or _FILES[layout][0])
    return _ratings(path, layout)


def layout_files(layout: str) -> dict[str, str | None]:
    """File names of a layout: {"ratings": ..., "movies": ..., "users": ... or None}."""
    ratings, movies, users = _FILES[_LAYOUT_ALIASES.get(layout, layout)]
    return {"ratings": ratings, "movies": movies, "users": users}


def _ratings(path: pathlib.Path, layout: str) -> Iterator[Rating]:
    try:
        with path.open("rb") as f:
            yield from read_ratings(f, path.name, layout)
    except OSError as e:
        raise DataError(f"cannot read {path.name}: {e.strerror or e}") from None


def read_ratings(
    f,
    name: str,
    layout: str,
    start: int = 0,
    end: int | None = None,
    claim=None,
    references: tuple[dict, dict, dict] | None = None,
) -> Iterator[Rating]:
    """The ratings of the lines that start in bytes [``start``, ``end``) of the open binary
    file ``f`` (the ratings file ``name`` of ``layout``), validated as :func:`iter_ratings`
    validates them: a file read in ranges that cover it yields every rating exactly once,
    the same as :func:`iter_ratings`.

    The line that straddles ``start`` belongs to the range before, the one that straddles
    ``end`` to this one (it is read to its newline). ``claim`` (a restriction tracker's
    ``try_claim``) is asked for each line's offset first; a False ends the range early.
    Only a range that starts at byte 0 knows its line numbers (``Rating.line``, and the
    messages say ``ratings.csv line 7: ...``) and reads ml-latest's header; elsewhere a
    message names the byte offset where the bad line starts and quotes it
    (``ratings.csv line at byte 4096 ('17,42,5.5,978300760'): ...``) and ``Rating.line`` is
    0. Every rating carries the offset of its line (``Rating.offset``). ``references``,
    ``(movies, users, files)`` as :func:`check_references` takes them, checks each rating
    against the catalog and the user file, with the same messages, the place named as
    above. Only the whole file (``start`` 0, ``end`` and ``claim`` None) is an error when
    it holds no rating.
    """
    whole = start == 0 and end is None and claim is None
    low, high = RATING_RANGE[layout]
    whole_stars = layout != "ml-latest"
    separator = _RATINGS_SEPARATOR[layout]
    place = _Place(name)
    rows = _split_lines(_lines(f, place, start, end, claim), place, separator)
    if layout == "ml-latest" and start == 0:
        numbered = ((place.number, fields) for fields in rows)
        if not _check_header(name, numbered, _RATINGS_HEADER):
            if whole:
                raise DataError(f"{name} is empty")
            return
    count = 0
    for fields in rows:
        try:
            if len(fields) != 4:
                raise DataError(_fields_problem(fields, 4, separator))
            user_id, movie_id, rating_text, timestamp_text = fields
            if not user_id:
                raise DataError("empty user id")
            if not movie_id:
                raise DataError("empty movie id")
            try:
                rating = float(rating_text)
            except ValueError:
                raise DataError(f"rating {rating_text!r} is not a number") from None
            if not math.isfinite(rating):
                raise DataError(f"rating {rating_text!r} is not a number")
            if whole_stars and not rating.is_integer():
                raise DataError(f"rating {rating_text!r} is not a whole number")
            if not whole_stars and not (2 * rating).is_integer():
                raise DataError(f"rating {rating_text!r} is not a multiple of 0.5")
            if not low <= rating <= high:
                raise DataError(f"rating {rating_text!r} outside {low:g}..{high:g}")
            if not (timestamp_text.isascii() and timestamp_text.isdigit()):
                raise DataError(f"timestamp {timestamp_text!r} is not a non-negative integer")
            timestamp = int(timestamp_text)
            if timestamp > _MILLISECONDS_THRESHOLD:
                if timestamp > 1000 * _MILLISECONDS_THRESHOLD:
                    raise DataError(
                        f"timestamp {timestamp_text!r} is neither seconds nor milliseconds"
                        " since 1970"
                    )
                timestamp //= 1000
            if not (  # one test for both ids: this is the hot loop
                user_id.isdigit() and movie_id.isdigit() and (user_id + movie_id).isascii()
            ):
                raise DataError(_id_problem("user", user_id) or _id_problem("movie", movie_id))
            item = Rating(user_id, movie_id, rating, timestamp, place.number, place.offset)
            if references:
                problem = _reference_problem(item, *references)
                if problem:
                    raise DataError(problem)
        except DataError as e:
            raise _header_hinted(
                DataError(f"{place}: {e}"), name, fields, layout == "ml-latest"
            ) from None
        count += 1
        yield item
    if whole and not count:
        raise DataError(
            f"{name} is empty" if layout != "ml-latest" else f"{name} is empty (header only)"
        )


# --- movies -------------------------------------------------------------------------------


def _release_year(title: str, release_date: str = "") -> int:
    """Year from a trailing ``(YYYY)`` in the title, else from ``01-Jan-1995``, else 0."""
    match = _TITLE_YEAR.search(title) or _RELEASE_DATE_YEAR.match(release_date.strip())
    return int(match.group(1)) if match else 0


def _split_genres(text: str) -> tuple[str, ...]:
    if text.strip() == _NO_GENRES:
        return ()
    return tuple(genre.strip() for genre in text.split("|") if genre.strip())


def _ml100k_genres(data_dir: pathlib.Path) -> tuple[str, ...]:
    """Genre names of u.genre ordered by index, or the standard 19 without the file."""
    path = data_dir / _GENRE_FILE
    if not path.is_file():
        return ML100K_GENRES
    by_index: dict[int, str] = {}
    for number, fields in _rows(path, "|"):
        try:
            _check_fields(path.name, number, fields, 2, "|")
            genre, index_text = fields
            if not genre or not (index_text.isascii() and index_text.isdigit()):
                raise DataError(
                    f"{path.name} line {number}: expected 'name|index',"
                    f" got {'|'.join(fields)!r}"
                )
        except DataError as e:
            raise _header_hinted(e, path.name, fields, False) from None
        if int(index_text) in by_index:
            raise DataError(f"{path.name} line {number}: duplicate genre index {index_text}")
        by_index[int(index_text)] = genre
    if not by_index:
        raise DataError(f"{path.name} is empty")
    if sorted(by_index) != list(range(len(by_index))):
        raise DataError(f"{path.name}: genre indices must run 0..N-1, got {sorted(by_index)}")
    return tuple(by_index[i] for i in range(len(by_index)))


def _parse_movie(
    name: str, number: int, fields: list[str], layout: str, genres: tuple[str, ...]
) -> Movie:
    where = f"{name} line {number}"
    if layout == "ml-100k":
        try:
            _check_fields(name, number, fields, 5 + len(genres), "|")
        except DataError as e:
            if len(fields) == 1:  # a delimiter problem, which the message already says
                raise
            raise DataError(
                f"{e} (5 fields and a 0/1 flag for each of the {len(genres)} genres)"
            ) from None
        movie_id, title, release_date = fields[:3]
        flags = fields[5:]
        if any(flag not in ("0", "1") for flag in flags):
            raise DataError(f"{where}: genre flags must be 0 or 1, got {'|'.join(flags)!r}")
        movie_genres = tuple(
            genre for genre, flag in zip(genres, flags, strict=True) if flag == "1"
        )
    elif layout == "ml-1m":
        if len(fields) < 3:
            raise DataError(f"{where}: expected 3 '::'-separated fields, got {len(fields)}")
        # A title containing '::' would split; the id is first and the genres last.
        movie_id, title, genre_text = fields[0], "::".join(fields[1:-1]), fields[-1]
        release_date, movie_genres = "", _split_genres(genre_text)
    else:
        _check_fields(name, number, fields, 3, None)
        movie_id, title, genre_text = fields
        release_date, movie_genres = "", _split_genres(genre_text)
    if not movie_id:
        raise DataError(f"{where}: empty movie id")
    _check_id(where, "movie", movie_id)
    return Movie(movie_id, title, movie_genres, _release_year(title, release_date))


def read_movies(data_dir: PathLike, layout: str | None = None) -> dict[str, Movie]:
    """Every movie of the catalog file, keyed by id, in file order.

    A movie id seen twice keeps its first entry. Genres come from u.item's flags or the
    ``|``-joined genre field; ``release_year`` from the title's trailing ``(YYYY)``, else
    u.item's release date, else 0. ml-100k's genre flags follow u.genre, so a genre added
    there (with its flag column in u.item) is read like the others. Malformed lines raise
    :class:`DataError`.
    """
    layout = _layout(layout, data_dir)
    return _read_movie_file(_existing(data_dir, _FILES[layout][1]), layout)


def movie_file_layout(path: PathLike) -> str | None:
    """The layout whose movie file has the name of ``path`` (u.item: ml-100k, movies.dat:
    ml-1m, movies.csv: ml-latest), or None."""
    name = storage.path(path).name
    return next((layout for layout in LAYOUTS if _FILES[layout][1] == name), None)


def read_movie_file(path: PathLike, layout: str | None = None) -> dict[str, Movie]:
    """The movies of one movie file of ``layout`` (None: told by the file's name, see
    :func:`movie_file_layout`), as :func:`read_movies` reads a directory's: keyed by id,
    in file order, the first entry of an id kept. An ml-100k file's genre flags follow the
    u.genre next to it (the 19 standard genres without one)."""
    file = storage.path(path)
    if layout is None:
        layout = movie_file_layout(file)
        if layout is None:
            names = ", ".join(f"{_FILES[name][1]} ({name})" for name in LAYOUTS)
            raise DataError(f"cannot tell the layout of {file.name} from its name "
                            f"(expected {names}): give the layout")
    else:
        layout = _layout(layout, file.parent)
    if not file.is_file():
        raise DataError(f"no such movie file: {file}")
    return _read_movie_file(file, layout)


def _read_movie_file(path, layout: str) -> dict[str, Movie]:
    genres = _ml100k_genres(path.parent) if layout == "ml-100k" else ()
    separator = _CATALOG_SEPARATOR[layout]
    rows = _rows(path, separator)
    if layout == "ml-latest":
        _check_header(path.name, rows, _MOVIES_HEADER)
    movies: dict[str, Movie] = {}
    for number, fields in rows:
        try:
            movie = _parse_movie(path.name, number, fields, layout, genres)
        except DataError as e:
            raise _header_hinted(e, path.name, fields, layout == "ml-latest") from None
        movies.setdefault(movie.movie_id, movie)
    if not movies:
        raise DataError(f"{path.name} is empty")
    return movies


# --- users --------------------------------------------------------------------------------


def read_users(data_dir: PathLike, layout: str | None = None) -> dict[str, User]:
    """Every user of the user file keyed by id, in file order; ``{}`` for ml-latest.

    ml-1m occupation codes are translated to their names (:data:`ML1M_OCCUPATIONS`).
    A user id seen twice keeps its first entry; malformed lines raise :class:`DataError`.
    """
    layout = _layout(layout, data_dir)
    if _FILES[layout][2] is None:
        return {}
    path = _existing(data_dir, _FILES[layout][2])
    separator = "|" if layout == "ml-100k" else "::"
    users: dict[str, User] = {}
    for number, fields in _rows(path, separator):
        where = f"{path.name} line {number}"
        try:
            _check_fields(path.name, number, fields, 5, separator)
            if layout == "ml-100k":
                user_id, age_text, gender, occupation, zip_code = fields
            else:
                user_id, gender, age_text, code, zip_code = fields
                if not (
                    code.isascii() and code.isdigit() and int(code) < len(ML1M_OCCUPATIONS)
                ):
                    raise DataError(
                        f"{where}: occupation code {code!r} outside"
                        f" 0..{len(ML1M_OCCUPATIONS) - 1}"
                    )
                occupation = ML1M_OCCUPATIONS[int(code)]
            if not user_id:
                raise DataError(f"{where}: empty user id")
            if not (age_text.isascii() and age_text.isdigit()):
                raise DataError(f"{where}: age {age_text!r} is not a non-negative integer")
            _check_id(where, "user", user_id)
        except DataError as e:
            raise _header_hinted(e, path.name, fields, False) from None
        users.setdefault(user_id, User(user_id, int(age_text), gender, occupation, zip_code))
    if not users:
        raise DataError(f"{path.name} is empty")
    return users


# --- references and pre-flight ------------------------------------------------------------


def _reference_problem(
    rating: Rating, movies: dict[str, Movie], users: dict[str, User], files: dict
) -> str | None:
    if rating.movie_id not in movies:
        return (f"movie {rating.movie_id!r} (rated by user {rating.user_id!r}) is not in"
                f" {files['movies']}")
    if users and rating.user_id not in users:
        return f"user {rating.user_id!r} is not in {files['users']}"
    return None


def check_references(
    rating: Rating, movies: dict[str, Movie], users: dict[str, User], files: dict
) -> None:
    """Raises :class:`DataError` when ``rating``'s movie is not in the catalog or, where the
    layout has a user file (``users`` not empty), its user is not in it.

    ``files`` is :func:`layout_files`'s mapping (``"ratings"`` naming the file the rating
    came from); the message names that file and the rating's line (or, for a rating read
    from a range of the file that does not start at its first byte, the line's offset).
    """
    problem = _reference_problem(rating, movies, users, files)
    if problem:
        raise DataError(f"{_where(files['ratings'], rating)}: {problem}")


def _where(name: str, rating: Rating) -> str:
    if rating.line:
        return f"{name} line {rating.line}"
    return f"{name} line at byte {rating.offset}" if rating.offset >= 0 else name


def preflight(
    data_dir: PathLike,
    layout: str | None = None,
    ratings_files: Sequence[str | None] = (None,),
    lines: int = PREFLIGHT_LINES,
) -> str:
    """Cheap checks of a MovieLens directory before a pipeline starts; returns its layout.

    In this order, stopping at the first problem with :class:`DataError`: the layout
    (detected when None) and that every file it needs is there (``ratings_files``: the
    ratings files to be read, None meaning the layout's own, e.g. ``["u1.base",
    "u1.test"]``); u.genre, the catalog and the user file, read in full (they are small);
    the first ``lines`` ratings of each ratings file, parsed, and their movies and users
    looked up. A ratings file is never read further, so this costs the same on ml-25m as on
    ml-100k; problems past those lines surface while the ratings stream through ExampleGen.
    """
    layout = _layout(layout, data_dir)
    files = layout_files(layout)
    needed = [name or files["ratings"] for name in ratings_files]
    for name in (*needed, files["movies"], files["users"]):
        if name:
            _existing(data_dir, name)
    movies = read_movies(data_dir, layout)
    users = read_users(data_dir, layout)
    for name in ratings_files:
        refs = {**files, "ratings": name or files["ratings"]}
        for rating in itertools.islice(iter_ratings(data_dir, layout, name), lines):
            check_references(rating, movies, users, refs)
    return layout


# --- fingerprint --------------------------------------------------------------------------


def fingerprint(data_dir: PathLike) -> str:
    """A stable hex digest of the MovieLens files in ``data_dir``.

    It covers the name, size and modification time (ns) of each file this module reads,
    so it is cheap (no file is read) and changes whenever one of them is rewritten.
    """
    directory = storage.path(data_dir)
    if not directory.is_dir():
        raise DataError(f"data directory does not exist: {directory}")
    digest = hashlib.sha256()
    for name in _KNOWN_FILES:
        path = directory / name
        if path.is_file():
            stat = path.stat()
            digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


# --- download -----------------------------------------------------------------------------


def _is_unsafe_member(member: str) -> bool:
    normalized = member.replace("\\", "/")
    return (
        normalized.startswith("/")
        or re.match(r"^[A-Za-z]:", normalized) is not None
        or ".." in normalized.split("/")
    )


def _find_data_dir(root: pathlib.Path) -> pathlib.Path | None:
    """The shallowest directory under ``root`` (inclusive) holding a MovieLens layout."""
    candidates = [root, *(path for path in root.rglob("*") if path.is_dir())]
    candidates.sort(key=lambda path: (len(path.relative_to(root).parts), str(path)))
    return next((path for path in candidates if _layout_of(path)), None)


def fetch_dataset(
    name: str = "ml-100k", cache_dir: PathLike | None = None, base_url: str | None = None
) -> pathlib.Path:
    """Downloads MovieLens dataset ``name`` once and returns its directory.

    ``cache_dir`` defaults to ``$MOVIEREC_CACHE`` or ``~/.cache/movierec``; ``base_url``
    to ``$MOVIEREC_DATA_URL`` or the GroupLens site (http(s):// and file:// both work).
    When ``cache_dir/name`` already holds MovieLens files it is returned without any
    network access. Otherwise ``{base_url}/{name}.zip`` is downloaded into a temporary
    directory inside ``cache_dir``, extracted (members with absolute or ``..`` paths are
    refused), and the folder holding the files is renamed to ``cache_dir/name``. On any
    failure a one-line :class:`DataError` is raised and nothing is left in the cache.
    """
    if name not in DATASETS:
        raise DataError(
            f"unknown MovieLens dataset {name!r}: expected one of {', '.join(DATASETS)}"
        )
    cache = pathlib.Path(
        cache_dir or os.environ.get("MOVIEREC_CACHE") or "~/.cache/movierec"
    ).expanduser()
    target = cache / name
    if target.is_dir() and _layout_of(target):
        return target

    base = (base_url or os.environ.get("MOVIEREC_DATA_URL") or DEFAULT_BASE_URL).rstrip("/")
    url = f"{base}/{name}.zip"
    cache.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache))
    try:
        archive = work / "download.zip"
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                with open(archive, "wb") as out:
                    shutil.copyfileobj(response, out, length=1 << 20)
        except urllib.error.HTTPError as e:
            raise DataError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            raise DataError(f"cannot download {url}: {e.reason}") from None
        except (OSError, ValueError) as e:
            raise DataError(f"cannot download {url}: {e}") from None

        extracted = work / "extracted"
        try:
            with zipfile.ZipFile(archive) as zf:
                unsafe = [m for m in zf.namelist() if _is_unsafe_member(m)]
                if unsafe:
                    raise DataError(
                        f"{url}: refusing archive member with unsafe path {unsafe[0]!r}"
                    )
                zf.extractall(extracted)
        except zipfile.BadZipFile as e:
            raise DataError(f"{url}: not a valid zip archive ({e})") from None

        found = _find_data_dir(extracted)
        if found is None:
            raise DataError(f"{url}: archive holds no MovieLens files")
        if target.exists() or target.is_symlink():
            # A leftover that is not a dataset: set it aside, it goes with ``work``.
            os.rename(target, work / "stale")
        try:
            os.rename(found, target)
        except OSError as e:
            if not _layout_of(target):  # else a concurrent fetch got there first
                raise DataError(f"cannot move the extracted {name} to {target}: {e}") from None
        return target
    except OSError as e:  # extraction or bookkeeping in the cache failed (disk full, ...)
        raise DataError(f"cannot fetch {url} into {cache}: {e}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


__all__ = [
    "DATASETS",
    "LAYOUTS",
    "ML100K_GENRES",
    "ML1M_OCCUPATIONS",
    "RATING_RANGE",
    "MAX_LINE_BYTES",
    "PREFLIGHT_LINES",
    "DataError",
    "Movie",
    "Rating",
    "User",
    "check_references",
    "detect_layout",
    "fetch_dataset",
    "fingerprint",
    "iter_ratings",
    "layout_files",
    "preflight",
    "ratings_path",
    "read_movies",
    "read_ratings",
    "read_users",
]

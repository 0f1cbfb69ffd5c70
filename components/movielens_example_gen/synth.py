"""Synthetic MovieLens-shaped data: tests, scale benchmarks and `movierec synth`.

Ratings are not noise: each user prefers a few genres, movies have popularity following a
Zipf-like law and users' activity is skewed, so a recommender has something to learn and
the data has the shape of the real thing. Output layouts: ml-100k (u.data, u.item, u.user,
u.genre) and ml-latest (ratings.csv, movies.csv).

`generate` + `write_ml100k` / `write_ml_latest` build small datasets in memory (tests);
`write_dataset` (the `movierec synth` command) streams large ones to disk in chunks of
users, vectorized, in bounded memory: about 1.8 s and 180 MB peak RSS per 1M ratings on
the 2-core project machine, ~200 MB at 3M (so 10M: ~20 s, still ~200 MB).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import pathlib
import time

import numpy as np

from components.movielens_example_gen import movielens

OCCUPATIONS = ("engineer", "student", "writer", "artist", "educator", "other")
_WORDS = ("night", "love", "star", "return", "city", "dark", "last", "story", "king",
          "river", "war", "dream", "lost", "blue", "game", "house", "secret", "road")
_START = 874_724_710  # ml-100k's first timestamp (1997-09-20)
_SPAN = 220 * 24 * 3600


@dataclasses.dataclass
class SynthData:
    movies: list  # movielens.Movie
    users: list  # movielens.User
    ratings: np.ndarray  # structured: user, movie (row indices), rating, timestamp


def generate(users: int = 60, movies: int = 80, ratings: int = 3000, seed: int = 0,
             genres=movielens.ML100K_GENRES[1:], half_stars: bool = False) -> SynthData:
    rng = np.random.default_rng(seed)
    genres = tuple(genres)
    movie_genres = [tuple(sorted(set(rng.choice(genres, size=rng.integers(1, 4)))))
                    for _ in range(movies)]
    movie_list = []
    for i, gs in enumerate(movie_genres):
        year = int(rng.integers(1930, 1999))
        words = " ".join(rng.choice(_WORDS, size=rng.integers(1, 4))).title()
        movie_list.append(movielens.Movie(str(i + 1), f"{words} {i + 1} ({year})", gs, year))
    user_list = [movielens.User(str(u + 1), int(rng.integers(15, 70)),
                                str(rng.choice(["M", "F"])), str(rng.choice(OCCUPATIONS)),
                                f"{int(rng.integers(0, 99999)):05d}")
                 for u in range(users)]
    taste = rng.dirichlet(np.full(len(genres), 0.3), size=users)  # users' genre preferences
    genre_index = {g: i for i, g in enumerate(genres)}
    affinity = np.zeros((users, movies))
    for m, gs in enumerate(movie_genres):
        affinity[:, m] = taste[:, [genre_index[g] for g in gs]].sum(axis=1)
    popularity = 1.0 / np.arange(1, movies + 1) ** 0.8
    activity = 1.0 / np.arange(1, users + 1) ** 0.5
    rng.shuffle(popularity)
    rng.shuffle(activity)

    n = min(ratings, users * movies)
    user_idx = rng.choice(users, size=n * 2, p=activity / activity.sum())
    chosen, seen = [], set()
    for u in user_idx:
        p = popularity * (0.2 + affinity[u])
        m = int(rng.choice(movies, p=p / p.sum()))
        if (u, m) not in seen:
            seen.add((u, m))
            chosen.append((u, m))
        if len(chosen) == n:
            break
    out = np.zeros(len(chosen), dtype=[("user", "i8"), ("movie", "i8"), ("rating", "f8"),
                                       ("timestamp", "i8")])
    for i, (u, m) in enumerate(chosen):
        score = 1.5 + 3.5 * affinity[u, m] / max(affinity[u].max(), 1e-9) + rng.normal(0, 0.6)
        score = np.clip(score, 0.5 if half_stars else 1.0, 5.0)
        out[i] = (u, m, round(score * 2) / 2 if half_stars else round(score),
                  _START + int(rng.integers(0, _SPAN)))
    return SynthData(movie_list, user_list, out)


def write_ml100k(directory, data: SynthData) -> pathlib.Path:
    """u.data / u.item / u.user / u.genre, as GroupLens ships ml-100k."""
    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    genres = movielens.ML100K_GENRES
    (d / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(genres)))
    with open(d / "u.item", "w", encoding="latin-1") as f:
        for m in data.movies:
            flags = "|".join("1" if g in m.genres else "0" for g in genres)
            f.write(f"{m.movie_id}|{m.title}|01-Jan-{m.release_year}||http://x|{flags}\n")
    with open(d / "u.user", "w") as f:
        for u in data.users:
            f.write(f"{u.user_id}|{u.age}|{u.gender}|{u.occupation}|{u.zip_code}\n")
    with open(d / "u.data", "w") as f:
        for r in data.ratings:
            f.write(f"{data.users[r['user']].user_id}\t{data.movies[r['movie']].movie_id}\t"
                    f"{int(r['rating'])}\t{r['timestamp']}\n")
    return d


def write_ml_latest(directory, data: SynthData) -> pathlib.Path:
    """ratings.csv / movies.csv, as GroupLens ships ml-latest and ml-25m."""
    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "movies.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["movieId", "title", "genres"])
        for m in data.movies:
            w.writerow([m.movie_id, m.title, "|".join(m.genres) or "(no genres listed)"])
    with open(d / "ratings.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["userId", "movieId", "rating", "timestamp"])
        for r in data.ratings:
            w.writerow([data.users[r["user"]].user_id, data.movies[r["movie"]].movie_id,
                        f"{r['rating']:.1f}", int(r["timestamp"])])
    return d


# ------------------------------------------------------------------ large datasets, streamed
# `write_dataset` (and `movierec synth`) generate the same kind of data as `generate` --
# Zipf-like movie popularity, skewed user activity, genre tastes that shape both what a
# user rates and how highly -- but vectorized and in chunks of users, so that tens of
# millions of ratings are written with a bounded amount of memory. Every user's ratings
# are drawn within one chunk, so (user, movie) pairs are unique without a global set.

#: Layout names `write_dataset` accepts, and the on-disk layout each one writes.
SYNTH_LAYOUTS = {"ml-25m": "ml-latest", "ml-latest": "ml-latest", "ml-100k": "ml-100k"}
LATEST_GENRES = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
# Movies per genre in ml-25m (ml-100k's "Children's" counts as "Children"): genre frequency.
_GENRE_WEIGHT = {
    "Drama": 25606, "Comedy": 16870, "Thriller": 8654, "Romance": 7719, "Action": 7348,
    "Horror": 5989, "Documentary": 5605, "Crime": 5319, "Adventure": 4145, "Sci-Fi": 3595,
    "Children": 2935, "Children's": 2935, "Animation": 2929, "Mystery": 2925,
    "Fantasy": 2731, "War": 1874, "Western": 1399, "Musical": 1054, "Film-Noir": 353,
    "IMAX": 195,
}  # fmt: skip
_GENRES_PER_MOVIE = (0.42, 0.33, 0.19, 0.06)  # P(1, 2, 3, 4 genres)
_NO_GENRE_SHARE = 0.05  # ml-latest: movies with "(no genres listed)"
# Time span of the ratings: ml-latest's (1995-01-09 .. 2019-11-21), ml-100k's 220 days.
_TIME_SPAN = {"ml-latest": (789_652_009, 1_574_327_703), "ml-100k": (_START, _START + _SPAN)}
_YEARS = {"ml-latest": (1915, 2019), "ml-100k": (1930, 1998)}
_MIN_RATINGS_PER_USER = 20  # as GroupLens selects users for ml-100k, ml-1m and ml-25m
CHUNK_RATINGS = 500_000  # ratings generated (and held) at a time
_CHUNK_CELLS = 8_000_000  # bound on users x movie-genre-combinations per chunk
_CHUNK_USERS = 50_000  # and on users per chunk (users without ratings cost memory too)
_MANIFEST = "synth.json"


@dataclasses.dataclass
class _Catalog:
    ids: np.ndarray  # int64 movie ids, in file order
    titles: list
    genres: list  # tuples of genre names
    years: np.ndarray
    genre_names: tuple
    genre_matrix: np.ndarray  # movies x genres, bool
    popularity: np.ndarray  # sums to 1
    bias: np.ndarray  # movies' rating offsets


def _catalog(rng, movies: int, layout: str) -> _Catalog:
    names = LATEST_GENRES if layout == "ml-latest" else movielens.ML100K_GENRES[1:]
    weight = np.array([_GENRE_WEIGHT[g] for g in names], dtype=float)
    count = rng.choice(len(_GENRES_PER_MOVIE), size=movies, p=_GENRES_PER_MOVIE) + 1
    if layout == "ml-latest":
        count[rng.random(movies) < _NO_GENRE_SHARE] = 0
    # `count` genres per movie, without replacement, in proportion to their frequency:
    # the largest Gumbel-perturbed log weights.
    keys = np.log(weight) + rng.gumbel(size=(movies, len(names)))
    rank = np.argsort(np.argsort(-keys, axis=1), axis=1)
    matrix = rank < count[:, None]
    years = rng.integers(*_YEARS[layout], endpoint=True, size=movies)
    n_words = rng.integers(1, 4, size=movies)
    words = rng.choice(len(_WORDS), size=(movies, 3))
    the = rng.random(movies) < 0.1
    if layout == "ml-latest":  # ids with gaps, as in ml-latest; ml-100k's run 1..n
        ids = np.sort(rng.choice(np.arange(1, 3 * movies + 1), size=movies, replace=False))
    else:
        ids = np.arange(1, movies + 1)
    titles, genres = [], []
    for i in range(movies):  # per movie, not per rating
        name = " ".join(_WORDS[w] for w in words[i, :n_words[i]]).title() + f" {ids[i]}"
        if the[i]:
            name = f"{name}, The" if layout == "ml-latest" else f"The {name}"
        titles.append(f"{name} ({years[i]})")
        genres.append(tuple(g for g, flag in zip(names, matrix[i]) if flag))
    popularity = 1.0 / np.arange(1, movies + 1) ** 0.8
    rng.shuffle(popularity)
    popularity /= popularity.sum()
    log_pop = np.log(popularity)
    bias = rng.normal(0, 0.3, size=movies) + 0.15 * (log_pop - log_pop.mean()) / max(
        log_pop.std(), 1e-9)
    return _Catalog(ids, titles, genres, years, tuple(names), matrix, popularity, bias)


def _ratings_per_user(rng, users: int, movies: int, ratings: int) -> np.ndarray:
    """How many ratings each user gives: at least min(20, R/3U), the rest by a Zipf-like
    activity (exponent 0.5, as ml-25m's users), each at most `cap` movies."""
    activity = 1.0 / np.arange(1, users + 1) ** 0.5
    rng.shuffle(activity)
    base = min(_MIN_RATINGS_PER_USER, ratings // (3 * users))
    counts = base + rng.multinomial(ratings - base * users, activity / activity.sum())
    # Nobody rates (nearly) the whole catalog unless the data is that dense.
    cap = min(movies, max(int(0.7 * movies), 2 * -(-ratings // users)))
    for _ in range(100):
        excess = int(np.maximum(counts - cap, 0).sum())
        if not excess:
            break
        counts = np.minimum(counts, cap)
        room = counts < cap
        share = activity * room
        counts = counts + rng.multinomial(excess, share / share.sum())
    else:  # the last few, in order, where there is room
        excess = int(np.maximum(counts - cap, 0).sum())
        counts = np.minimum(counts, cap)
        for u in np.flatnonzero(counts < cap):
            add = min(excess, cap - counts[u])
            counts[u] += add
            excess -= add
            if not excess:
                break
    return counts


def _sample_without_replacement(rng, p: np.ndarray, k: int, exclude: np.ndarray) -> np.ndarray:
    """k indices drawn one after another in proportion to p, never twice nor in exclude."""
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    keys = np.log(np.maximum(p, 1e-300)) + rng.gumbel(size=len(p))
    keys[exclude] = -np.inf
    return np.argpartition(-keys, k - 1)[:k] if k < len(p) else np.argsort(-keys)[:k]


def _chunk_ratings(rng, catalog: _Catalog, first_user: int, counts: np.ndarray,
                   layout: str, combos, combo_of_movie, stacked_cdf, genre_mass):
    """The ratings of users first_user .. first_user + len(counts) - 1: (user index, movie
    index, rating, timestamp) arrays, sorted by user then time (ml-latest) or shuffled
    (ml-100k, as GroupLens ships u.data)."""
    nb, n_movies = len(counts), len(catalog.ids)
    taste = rng.dirichlet(np.full(len(catalog.genre_names), 0.3), size=nb)
    # P(movie | user) ∝ popularity * (0.2 + sum of the user's taste over the movie's
    # genres): a mixture of "any movie by popularity" (weight 0.2) and, per genre g,
    # "a movie of genre g by popularity" (weight taste[g] * mass of g). Row u of
    # `mixture` is u + the user's CDF over the components, so one searchsorted over the
    # flattened rows picks every draw's component; `stacked_cdf` likewise holds
    # component c's CDF over movies, plus c.
    n_components = 1 + len(genre_mass)
    mixture = np.cumsum(np.concatenate([np.full((nb, 1), 0.2), taste * genre_mass], axis=1),
                        axis=1)
    mixture = (mixture / mixture[:, -1:] + np.arange(nb)[:, None]).ravel()

    def draw(user_local: np.ndarray) -> np.ndarray:
        component = np.searchsorted(mixture, user_local + rng.random(len(user_local)),
                                    side="right") - user_local * n_components
        component = np.minimum(component, n_components - 1)
        movie = np.searchsorted(stacked_cdf, component + rng.random(len(user_local)),
                                side="right") - component * n_movies
        return np.clip(movie, 0, n_movies - 1)

    # Light users: draw, drop repeats, draw again what is missing. Heavy users (a tenth of
    # the catalog or more), and whoever still misses some after a few rounds: sequential
    # sampling without replacement over the whole catalog (the same distribution).
    heavy = counts * 10 > n_movies
    need = np.where(heavy, 0, counts)
    user_local = np.repeat(np.arange(nb), need)
    keys = np.unique(user_local * n_movies + draw(user_local))  # sorted
    added = [np.empty(0, dtype=np.int64)]
    for _ in range(8):
        need = np.where(heavy, 0, counts - np.bincount(
            np.concatenate([keys] + added) // n_movies, minlength=nb))
        if not need.any():
            break
        user_local = np.repeat(np.arange(nb), need)
        new = np.unique(user_local * n_movies + draw(user_local))
        seen = np.searchsorted(keys, new).clip(max=max(len(keys) - 1, 0))
        new = new[keys[seen] != new] if len(keys) else new
        previous = np.concatenate(added)
        added.append(new[~np.isin(new, previous)] if len(previous) else new)
    keys = np.concatenate([keys] + added)
    missing = np.flatnonzero(heavy | (need > 0))
    if missing.size:
        keys.sort()
        extra = []
        genre_float = catalog.genre_matrix.astype(np.float64)
        have_start = np.searchsorted(keys, missing * n_movies)
        have_end = np.searchsorted(keys, (missing + 1) * n_movies)
        for u, a, b in zip(missing, have_start, have_end):  # per user, not per rating
            p = catalog.popularity * (0.2 + genre_float @ taste[u])
            k = int(counts[u] - (b - a))
            extra.append(u * n_movies + _sample_without_replacement(
                rng, p, k, keys[a:b] % n_movies))
        keys = np.concatenate([keys] + extra)
    user_local, movie = keys // n_movies, keys % n_movies

    # How much a user likes a movie: taste summed over its genres, relative to the user's
    # best genre combination in the catalog; plus user and movie biases and noise.
    affinity_by_combo = (taste @ combos.T).astype(np.float32)  # users x combinations
    best = np.maximum(affinity_by_combo.max(axis=1), 1e-9)
    affinity = affinity_by_combo[user_local, combo_of_movie[movie]] / best[user_local]
    user_bias = rng.normal(0, 0.35, size=nb)
    score = (2.85 + 2.6 * affinity + user_bias[user_local] + catalog.bias[movie]
             + rng.normal(0, 0.6, size=len(keys)))
    if layout == "ml-latest":
        rating2 = np.clip(np.rint(score * 2), 1, 10).astype(np.int64)  # half stars x 2
    else:
        rating2 = 2 * np.clip(np.rint(score), 1, 5).astype(np.int64)

    # When: each user joins at a random time and rates most movies soon after.
    start, end = _TIME_SPAN[layout]
    joined = rng.integers(start, end, size=nb)
    stays = np.minimum(np.exp(rng.normal(np.log(30 * 86400), 1.5, size=nb)), end - joined)
    timestamp = joined[user_local] + (stays[user_local] * rng.random(len(keys)) ** 3).astype(
        np.int64)
    order = (np.argsort((user_local << 32) | (timestamp - start)) if layout == "ml-latest"
             else rng.permutation(len(keys)))
    return user_local[order] + first_user, movie[order], rating2[order], timestamp[order]


def _digits(values: np.ndarray):
    """(bytes matrix, valid mask): the decimal digits of non-negative ints, right-aligned."""
    width = len(str(int(values.max()))) if len(values) else 1
    out = np.empty((len(values), width), dtype=np.uint8)
    rest = values.astype(np.int64, copy=True)
    for i in range(width - 1, -1, -1):
        np.remainder(rest, 10, out=out[:, i], casting="unsafe")
        rest //= 10
    out += ord("0")
    length = np.ones(len(values), dtype=np.int64)
    for k in range(1, width):
        length += values >= 10**k
    return out, np.arange(width) >= (width - length)[:, None]


def _format_lines(columns, separator: bytes) -> bytes:
    """Rows of text, one per line, from columns: int arrays (written in decimal) or
    (fixed-width byte table, index array) pairs. Vectorized: no Python loop per row."""
    n = len(columns[0]) if not isinstance(columns[0], tuple) else len(columns[0][1])
    parts, masks = [], []
    for i, column in enumerate(columns):
        if i:
            parts.append(np.full((n, len(separator)), list(separator), dtype=np.uint8))
            masks.append(np.ones((n, len(separator)), dtype=bool))
        if isinstance(column, tuple):
            table, index = column
            parts.append(table[index])
            masks.append(np.ones(parts[-1].shape, dtype=bool))
        else:
            digits, mask = _digits(column)
            parts.append(digits)
            masks.append(mask)
    parts.append(np.full((n, 1), ord("\n"), dtype=np.uint8))
    masks.append(np.ones((n, 1), dtype=bool))
    return np.concatenate(parts, axis=1)[np.concatenate(masks, axis=1)].tobytes()


def _write_catalog(directory: pathlib.Path, catalog: _Catalog, layout: str, suffix: str):
    if layout == "ml-latest":
        with open(directory / f"movies.csv{suffix}", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["movieId", "title", "genres"])
            for movie_id, title, genres in zip(catalog.ids, catalog.titles, catalog.genres):
                w.writerow([int(movie_id), title, "|".join(genres) or "(no genres listed)"])
        return
    all_genres = movielens.ML100K_GENRES
    (directory / f"u.genre{suffix}").write_text(
        "".join(f"{g}|{i}\n" for i, g in enumerate(all_genres)))
    with open(directory / f"u.item{suffix}", "w", encoding="latin-1") as f:
        for movie_id, title, genres, year in zip(catalog.ids, catalog.titles, catalog.genres,
                                                 catalog.years):
            flags = "|".join("1" if g in genres or (g == "unknown" and not genres) else "0"
                             for g in all_genres)
            f.write(f"{movie_id}|{title}|01-Jan-{year}||http://example.com/{movie_id}|"
                    f"{flags}\n")


def _write_users(path: pathlib.Path, rng, users: int):
    with open(path, "w") as f:
        for start in range(0, users, CHUNK_RATINGS):
            n = min(CHUNK_RATINGS, users - start)
            age = rng.integers(15, 70, size=n)
            gender = rng.choice(["M", "F"], size=n, p=[0.7, 0.3])
            occupation = rng.choice(OCCUPATIONS, size=n)
            zip_code = rng.integers(0, 100000, size=n)
            f.write("".join(f"{start + i + 1}|{age[i]}|{gender[i]}|{occupation[i]}|"
                            f"{zip_code[i]:05d}\n" for i in range(n)))


def _known_files() -> set:
    return {name for layout in movielens.LAYOUTS
            for name in movielens.layout_files(layout).values() if name} | {"u.genre"}


def write_dataset(directory, users: int, movies: int, ratings: int, seed: int = 0,
                  layout: str = "ml-25m", overwrite: bool = False,
                  chunk_ratings: int = CHUNK_RATINGS) -> dict:
    """Writes a synthetic MovieLens directory, streaming the ratings in chunks; returns a
    summary (also written to `synth.json` in the directory).

    layout "ml-25m" (= "ml-latest"): ratings.csv (userId,movieId,rating,timestamp; half
    stars, sorted by user then time) and movies.csv (title "(year)", |-joined genres);
    "ml-100k": u.data, u.item, u.user, u.genre (whole stars). The same arguments always
    write the same files. Files appear under their final names only once complete.
    """
    started = time.perf_counter()
    if layout not in SYNTH_LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(SYNTH_LAYOUTS)}, not {layout!r}")
    disk_layout = SYNTH_LAYOUTS[layout]
    for name, value in (("users", users), ("movies", movies), ("ratings", ratings)):
        if int(value) < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if ratings > users * movies:
        raise ValueError(f"{ratings} ratings need more than {users} users x {movies} movies "
                         f"(each user rates a movie at most once)")
    if chunk_ratings < 1:
        raise ValueError("chunk_ratings must be at least 1")
    d = pathlib.Path(directory)
    if d.exists() and not d.is_dir():
        raise ValueError(f"{d} exists and is not a directory")
    d.mkdir(parents=True, exist_ok=True)
    present = sorted(n for n in _known_files() | {_MANIFEST} if (d / n).exists())
    if present and not overwrite:
        raise ValueError(f"{d} already holds {', '.join(present)} (overwrite to replace)")
    for name in present:  # no files of another layout may stay behind: detection picks one
        (d / name).unlink()

    catalog_seed, counts_seed, users_seed, chunks_seed = np.random.SeedSequence(seed).spawn(4)
    catalog_rng, counts_rng, users_rng = (
        np.random.default_rng(s) for s in (catalog_seed, counts_seed, users_seed))
    catalog = _catalog(catalog_rng, movies, disk_layout)
    counts = _ratings_per_user(counts_rng, users, movies, ratings)

    # Movies grouped by their set of genres, and a CDF per mixture component.
    combos, combo_of_movie = np.unique(catalog.genre_matrix, axis=0, return_inverse=True)
    combos = combos.astype(np.float64)
    combo_of_movie = combo_of_movie.reshape(-1)
    by_genre = catalog.popularity[:, None] * catalog.genre_matrix
    genre_mass = by_genre.sum(axis=0)
    stacked_cdf = []
    for c, weights in enumerate([catalog.popularity] + list(by_genre.T)):
        cdf = np.cumsum(weights)
        # (a genre no movie has gets no draws: its mixture weight is 0)
        stacked_cdf.append(c + (cdf / cdf[-1] if cdf[-1] > 0 else np.ones_like(cdf)))
    stacked_cdf = np.concatenate(stacked_cdf)
    max_users = max(1, min(_CHUNK_USERS, _CHUNK_CELLS // len(combos)))

    suffix = ".partial"
    files = movielens.layout_files(disk_layout)
    _write_catalog(d, catalog, disk_layout, suffix)
    if files["users"]:
        _write_users(d / f"{files['users']}{suffix}", users_rng, users)
    if disk_layout == "ml-latest":
        stars = np.array([list(b"0.0")] + [list(b"%.1f" % (k / 2)) for k in range(1, 11)],
                         dtype=np.uint8)
        separator, header = b",", b"userId,movieId,rating,timestamp\n"
    else:
        stars = np.array([list(b"%d" % (k // 2)) for k in range(11)], dtype=np.uint8)
        separator, header = b"\t", b""
    cumulative = np.cumsum(counts)
    written, rated_movies, peak_chunk = 0, np.zeros(movies, dtype=bool), 0
    with open(d / f"{files['ratings']}{suffix}", "wb") as f:
        f.write(header)
        first, block = 0, 0
        while first < users:
            done = cumulative[first - 1] if first else 0
            last = int(np.searchsorted(cumulative, done + chunk_ratings, side="right"))
            last = min(max(last, first + 1), first + max_users, users)
            rng = np.random.default_rng(chunks_seed.spawn(1)[0])  # the block-th child
            user, movie, rating2, timestamp = _chunk_ratings(
                rng, catalog, first, counts[first:last], disk_layout, combos,
                combo_of_movie, stacked_cdf, genre_mass)
            f.write(_format_lines([user + 1, catalog.ids[movie], (stars, rating2), timestamp],
                                  separator))
            written += len(user)
            peak_chunk = max(peak_chunk, len(user))
            rated_movies[movie] = True
            first, block = last, block + 1
    if written != ratings:  # cannot happen: every user's count is drawn exactly
        raise RuntimeError(f"synth wrote {written} ratings instead of {ratings}")
    for name in [n for n in files.values() if n] + (["u.genre"] if disk_layout == "ml-100k"
                                                    else []):
        os.replace(d / f"{name}{suffix}", d / name)
    summary = {
        "layout": disk_layout, "requested_layout": layout, "directory": str(d),
        "users": users, "movies": movies, "ratings": written, "seed": seed,
        "users_with_ratings": int((counts > 0).sum()), "rated_movies": int(rated_movies.sum()),
        "max_ratings_per_user": int(counts.max()), "chunks": block,
        "largest_chunk": peak_chunk,
        "ratings_file_bytes": (d / files["ratings"]).stat().st_size,
        "seconds": round(time.perf_counter() - started, 2),
    }
    (d / _MANIFEST).write_text(json.dumps(summary, indent=1) + "\n")
    return summary


# ------------------------------------------------------------------------ `movierec synth`
def _count(name: str, text) -> int:
    """A positive count from e.g. '5000', '100k', '10M', '1_000_000'."""
    from pipeline.errors import UserError

    if text is None:
        raise UserError(f"synth needs --{name}")
    value = str(text).strip().lower().replace("_", "").replace(",", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(value[-1:], 1)
    digits = value[:-1] if scale > 1 else value
    try:
        number = float(digits) * scale if "." in digits else int(digits) * scale
    except ValueError:
        raise UserError(f"--{name} must be a positive whole number (e.g. 5000, 100k, 10m), "
                        f"got {text!r}") from None
    if number != int(number) or number < 1:
        raise UserError(f"--{name} must be a positive whole number, got {text!r}")
    return int(number)


def cmd_synth(args) -> int:
    from pipeline.errors import UserError

    users, movies, ratings = (_count(n, getattr(args, n)) for n in ("users", "movies",
                                                                     "ratings"))
    if not args.output:
        raise UserError("synth needs --output DIR")
    try:
        seed = int(args.seed)
    except ValueError:
        raise UserError(f"--seed must be a non-negative integer, got {args.seed!r}") from None
    if seed < 0:
        raise UserError(f"--seed must be a non-negative integer, got {args.seed!r}")
    if args.layout not in SYNTH_LAYOUTS:
        raise UserError(f"--layout must be one of {', '.join(SYNTH_LAYOUTS)}, "
                        f"not {args.layout!r}")
    try:
        summary = write_dataset(args.output, users, movies, ratings, seed=seed,
                                layout=args.layout, overwrite=args.force)
    except ValueError as e:
        raise UserError(str(e)) from None
    except OSError as e:
        raise UserError(f"cannot write {args.output}: {e.strerror or e}") from None
    print(f"synth: {summary['ratings']:,} ratings by {summary['users_with_ratings']:,} users "
          f"of {summary['rated_movies']:,}/{movies:,} movies ({summary['layout']}, seed "
          f"{seed}) -> {args.output} in {summary['seconds']:.1f} s "
          f"({summary['ratings_file_bytes'] / 2**20:.1f} MiB of ratings)", flush=True)
    return 0


def add_commands(sub) -> None:
    """Adds `movierec synth` to the `movierec` argument parser."""
    synth = sub.add_parser(
        "synth", help="write a synthetic MovieLens dataset (skewed popularity and activity)",
        description="Writes a MovieLens-shaped directory of synthetic ratings: Zipf-like "
        "movie popularity, skewed user activity (every user rates at least min(20, R/3U) "
        "movies), genre tastes that shape what users rate and how highly. Ratings are "
        "generated and written in chunks, so 10M ratings need little memory. Counts accept "
        "k and m suffixes (100k, 10m). The same arguments always write the same files.")
    synth.add_argument("--users", help="number of users (required)")
    synth.add_argument("--movies", help="number of movies in the catalog (required)")
    synth.add_argument("--ratings", help="number of ratings (required; at most "
                       "users x movies)")
    synth.add_argument("--output", metavar="DIR", help="directory to write (required)")
    synth.add_argument("--seed", default="0", help="random seed (default 0)")
    synth.add_argument("--layout", default="ml-25m",
                       help="ml-25m (default; = ml-latest: ratings.csv + movies.csv, half "
                       "stars) or ml-100k (u.data, u.item, u.user, u.genre)")
    synth.add_argument("--force", action="store_true",
                       help="replace MovieLens files already in DIR")
    synth.set_defaults(func=cmd_synth)

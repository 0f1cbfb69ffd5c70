"""Synthetic MovieLens-shaped data: tests, scale benchmarks and `movierec synth`.

Ratings are not noise: each user prefers a few genres, movies have popularity following a
Zipf-like law and users' activity is skewed, so a recommender has something to learn and
the data has the shape of the real thing. Output layouts: ml-100k (u.data, u.item, u.user,
u.genre) and ml-latest (ratings.csv, movies.csv).
"""

from __future__ import annotations

import csv
import dataclasses
import pathlib

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

"""`movierec serve`, `movierec recommend`, `movierec rate` (wired into pipeline/cli.py)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

DEFAULT_MODEL = "output/serving/movierec"


def add_commands(sub) -> None:
    """Adds the serving subcommands to the `movierec` argument parser."""
    serve = sub.add_parser(
        "serve", help="serve the pushed models over TF Serving's REST API",
        description="Serves the newest version under MODEL_BASE/MODEL_NAME with TF Serving's "
        "REST API (/v1/models/NAME, .../metadata, ...:predict) and picks up newly pushed "
        "versions without a restart.")
    serve.add_argument("--model-base", default="output/serving",
                       help="the serving base: versions are MODEL_BASE/MODEL_NAME/<int>/ "
                       "(default: output/serving)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: loopback only)")
    serve.add_argument("--port", type=int, default=8501,
                       help="port (default 8501, TF Serving's REST port; 0: any free one)")
    serve.add_argument("--model-name", default="movierec")
    serve.add_argument("--poll-seconds", type=float, default=2.0,
                       help="how often to look for new versions (default 2)")
    serve.add_argument("--threads", type=int, default=1,
                       help="model calls run at once, each in a thread of its own (default "
                       "1: on a few cores, one call at a time, with the requests that wait "
                       "for it batched, is fastest)")
    serve.add_argument("--workers", type=int, default=1,
                       help="server processes answering on the one address (default 1); "
                       "each loads the model and batches its own requests: on 2 or more "
                       "cores, 2 answer more requests at a lower latency than 1 (the "
                       "README's Serving section)")
    serve.add_argument("--tf-threads", type=int, default=0,
                       help="TensorFlow's threads for the model's operations, per worker "
                       "(default 0: the cores shared out between the workers)")
    serve.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)  # a worker's socket
    serve.add_argument("--loads-file", help=argparse.SUPPRESS)  # workers' connection counts
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # its slot there
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.add_argument("--ready-file", help=argparse.SUPPRESS)  # "HOST PORT" once listening
    serve.set_defaults(func=cmd_serve)

    recommend = _query_parser(sub, "recommend", "top movies for a user, from a pushed model")
    recommend.add_argument("-k", type=int, default=10, help="how many movies (1..100)")
    recommend.set_defaults(func=cmd_recommend)

    rate = _query_parser(sub, "rate", "predicted rating of a movie by a user")
    rate.add_argument("--movie", required=True,
                      help="movie id, or title (exact, case-insensitive, else a unique "
                      "part of one)")
    rate.add_argument("--at", type=int, default=0, metavar="TIMESTAMP",
                      help="when (seconds since the epoch; default now): the model's time "
                      "features see it")
    rate.set_defaults(func=cmd_rate)


def _query_parser(sub, name: str, help_text: str):
    """A subcommand that asks a pushed model about one user: --model, --user, --rated,
    --json."""
    parser = sub.add_parser(name, help=help_text)
    parser.add_argument("--rated", default="", metavar="MOVIE:RATING,...",
                        help="ratings the user made that the model may not know (e.g. "
                        "50:5,181:4; oldest first), merged with its stored history")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="a SavedModel version dir, or a serving base (its newest "
                        f"version); default {DEFAULT_MODEL}")
    parser.add_argument("--user", required=True, help="user id")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    return parser


# -------------------------------------------------------------------------------- serve
def cmd_serve(args) -> int:
    # TensorFlow's Eigen kernels, as TF Serving's own builds run, not oneDNN's (its default
    # on x86): oneDNN's batched matmul (a recommendation's `because`) alone costs a tenth
    # of a served call (docs/benchmarks.md); before TensorFlow is imported, here and in the
    # workers, which inherit it
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    from pipeline.errors import UserError
    from trainer import storage

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be 0..65535, got {args.port}")
    if args.poll_seconds <= 0:
        raise UserError("--poll-seconds must be positive")
    if args.threads < 1:
        raise UserError("--threads must be at least 1")
    if args.workers < 1:
        raise UserError("--workers must be at least 1")
    if args.tf_threads < 0:
        raise UserError("--tf-threads must be 0 (one per core) or more")
    if not storage.isdir(args.model_base):
        raise UserError(f"--model-base {args.model_base} is not a directory")
    worker = args.listen_fd is not None
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s movierec.serve"
        + ("[%(process)d]" if worker or args.workers > 1 else "") + ": %(message)s")
    logging.getLogger("movierec.serve").setLevel(logging.INFO)
    from serving import workers

    threads = workers.tf_threads(args.workers, args.tf_threads)
    if args.workers > 1 and not worker:
        try:
            supervisor = workers.Supervisor(
                ["--model-base", args.model_base, "--model-name", args.model_name,
                 "--poll-seconds", str(args.poll_seconds), "--threads", str(args.threads),
                 "--tf-threads", str(threads)] + (["--access-log"] if args.access_log else []),
                args.workers, args.host, args.port, ready_file=args.ready_file)
        except OSError as e:
            raise UserError(f"cannot listen on {args.host}:{args.port}: "
                            f"{e.strerror or e}") from None
        workers.warn_if_reachable(args.host)
        return supervisor.run()
    from serving import server

    return server.serve(args.model_base, host=args.host, port=args.port,
                        model_name=args.model_name, poll_seconds=args.poll_seconds,
                        threads=args.threads, access_log=args.access_log,
                        ready_file=args.ready_file, tf_threads=threads,
                        listen_fd=args.listen_fd, loads=(
                            None if args.loads_file is None
                            else (args.loads_file, args.worker_index)))


# ------------------------------------------------------------------- recommend and rate
def _load(path: str):
    """(loaded model, its directory) for a version dir or a serving base: the base's newest
    version that loads (a broken newer one is named on stderr)."""
    from serving import versions
    from trainer import saved_model
    from trainer import signatures as S

    def check(model):
        missing = {S.RECOMMEND_AT, S.RATE} - set(model.signatures)
        if missing:
            return f"not a movierec model (no signature {sorted(missing)[0]})"
        return None

    return versions.load_newest(path, saved_model.load, check=check)


def parse_rated(text: str, ids: list[str]) -> dict:
    """`--rated 50:5,181:4` as the signatures' history inputs (one request; the movies in
    the order given, the last the newest, all before now). One-line errors name the bad
    entry: not movie:rating, a movie the model does not know, a rating outside
    trainer.signatures.RATING_RANGE, more than MAX_HISTORY entries."""
    import time

    import numpy as np

    from pipeline.errors import UserError
    from trainer import signatures as S

    entries = [e.strip() for e in text.split(",") if e.strip()]
    if len(entries) > S.MAX_HISTORY:
        raise UserError(f"--rated: at most {S.MAX_HISTORY} ratings, got {len(entries)}")
    known = set(ids)
    movies, ratings = [], []
    low, high = S.RATING_RANGE
    for entry in entries:
        movie, sep, value = entry.rpartition(":")
        try:
            rating = float(value)
        except ValueError:
            rating = None
        if not sep or not movie or rating is None:
            raise UserError(f"--rated: {entry!r} is not movie:rating (e.g. 50:5)")
        if movie not in known:
            raise UserError(f"--rated: movie {movie!r} is not in the model's catalog")
        if not low <= rating <= high:
            raise UserError(f"--rated: rating {value} of movie {movie!r} is outside "
                            f"{low:g}..{high:g}")
        movies.append(movie)
        ratings.append(rating)
    now = int(time.time())
    stamps = [now - len(movies) + i for i in range(len(movies))]
    return {S.HISTORY_MOVIE_IDS: np.array([movies], dtype=object).reshape(1, -1),
            S.HISTORY_RATINGS: np.array([ratings], dtype=np.float32).reshape(1, -1),
            S.HISTORY_TIMESTAMPS: np.array([stamps], dtype=np.int64).reshape(1, -1)}


def _recommendations(model, user: str, k: int, history: dict | None = None):
    import tensorflow as tf

    from trainer import saved_model
    from trainer import signatures as S

    out = saved_model.call(model, S.RECOMMEND_AT, **{
        S.USER_ID: tf.constant([user]), S.TIMESTAMP: tf.constant([0], tf.int64),
        S.K: tf.constant([k], tf.int64), **(history or {}),
        S.EXCLUDE_RATED: tf.constant([True])})  # as `recommend`: not what they rated
    ids = [v.decode("utf-8") for v in out[S.MOVIE_IDS].numpy()[0]]
    titles = [v.decode("utf-8") for v in out[S.MOVIE_TITLES].numpy()[0]]
    scores = [float(s) for s in out[S.SCORES].numpy()[0]]
    # the history movie behind each ("": none; models exported before `because`: none)
    because = ([v.decode("utf-8") for v in out[S.BECAUSE].numpy()[0]] if S.BECAUSE in out
               else [""] * len(ids))
    return ids, titles, scores, because, bool(out[S.KNOWN_USER].numpy()[0])


def cmd_recommend(args) -> int:
    from pipeline.errors import UserError
    from trainer.signatures import MAX_K

    if not 1 <= args.k <= MAX_K:
        raise UserError(f"-k must be 1..{MAX_K}, got {args.k}")
    model, model_dir = _load(args.model)
    history = None
    if args.rated:
        from serving.model import movie_catalog

        history = parse_rated(args.rated, movie_catalog(model)[0])
    ids, titles, scores, because, known = _recommendations(model, args.user, args.k, history)
    if args.json:
        print(json.dumps({
            "user_id": args.user, "known_user": known, "model": model_dir,
            "recommendations": [
                {"rank": i + 1, "movie_id": m, "title": t, "score": round(s, 6),
                 "because": b or None}
                for i, (m, t, s, b) in enumerate(zip(ids, titles, scores, because))],
        }, ensure_ascii=False))
        return 0
    if known:
        print(f"top {len(ids)} movies for user {args.user} (model {model_dir}):")
    else:
        given = "the ratings given (--rated)" if history else "no history (see --rated)"
        print(f"user {args.user} is unknown to the model: top {len(ids)} movies from "
              f"{given} (model {model_dir}):")
    id_width = max([len("movie")] + [len(m) for m in ids])
    # the movie of the user's history behind each recommendation (its id; "-": none)
    because = [b or "-" for b in because]
    by_width = max([len("because")] + [len(b) for b in because])
    print(f"{'rank':>4}  {'movie':>{id_width}}  {'score':>8}  {'because':>{by_width}}  title")
    for i, (m, t, s, b) in enumerate(zip(ids, titles, scores, because)):
        print(f"{i + 1:>4}  {m:>{id_width}}  {s:>8.4f}  {b:>{by_width}}  {t}")
    return 0


def resolve_movie(query: str, ids: list[str], titles: list[str]) -> tuple[str, str]:
    """(movie id, title) for a movie id, or a title: exact (case-insensitive), else the
    only title containing `query`. Raises UserError when it is none or several."""
    from pipeline.errors import UserError

    if query in ids:
        i = ids.index(query)
        return ids[i], titles[i]
    wanted = query.strip().casefold()
    if not wanted:
        raise UserError("--movie is empty")
    exact = [i for i, t in enumerate(titles) if t.casefold() == wanted]
    if len(exact) == 1:
        return ids[exact[0]], titles[exact[0]]
    matches = exact or [i for i, t in enumerate(titles) if wanted in t.casefold()]
    if not matches:
        raise UserError(f"no movie with id or title {query!r}")
    if len(matches) > 1:
        shown = "; ".join(f"{titles[i]} (id {ids[i]})" for i in matches[:5])
        more = f" and {len(matches) - 5} more" if len(matches) > 5 else ""
        raise UserError(f"{query!r} matches {len(matches)} movies: {shown}{more}; "
                        f"give a movie id or a longer title")
    return ids[matches[0]], titles[matches[0]]


def cmd_rate(args) -> int:
    import tensorflow as tf

    from trainer import saved_model
    from trainer import signatures as S

    from pipeline.errors import UserError
    from serving.model import movie_catalog

    model, model_dir = _load(args.model)
    try:
        ids, titles = movie_catalog(model)
    except ValueError as e:
        raise UserError(f"{model_dir}: {e}") from e
    movie_id, title = resolve_movie(args.movie, ids, titles)
    inputs = {S.USER_ID: tf.constant([args.user]), S.MOVIE_ID: tf.constant([movie_id])}
    if S.TIMESTAMP in model.signatures[S.RATE].structured_input_signature[1]:
        inputs[S.TIMESTAMP] = tf.constant([args.at], tf.int64)
    elif args.at:
        raise UserError(f"{model_dir}: its rate signature takes no timestamp (exported "
                        f"before rate had one): --at needs a newer model")
    history = parse_rated(args.rated, ids) if args.rated else None
    out = saved_model.call(model, S.RATE, **inputs, **(history or {}))
    rating = float(out[S.RATING].numpy()[0])
    *_, known_user = _recommendations(model, args.user, 1, history)
    if args.json:
        print(json.dumps({"user_id": args.user, "movie_id": movie_id, "title": title,
                          "rating": round(rating, 4), "known_user": known_user,
                          "model": model_dir}, ensure_ascii=False))
        return 0
    print(f"user {args.user} would rate {title} (movie {movie_id}): {rating:.2f} / 5")
    if not known_user:
        print(f"note: user {args.user} is unknown to the model; the prediction uses "
              f"{'the ratings given (--rated)' if history else 'no knowledge of this user'}")
    return 0

"""ScaNN vs brute force on a large synthetic catalog: recall@10 and query latency.

    .venv/bin/python benchmarks/scann_index.py [--movies 100000] [--queries 2000] [--dim 32]

Candidates are clustered synthetic embeddings (like a trained candidate tower's: movies
group by taste); queries are drawn from the same mixture. Both indexes are the TFRS layers
the export uses (trainer/export.py, `--index brute_force|scann`). recall@10 = share of the
exact top 10 (brute force) that ScaNN returns; latency is one query per call, in process.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from trainer import export  # noqa: E402


def synthetic(movies: int, queries: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(max(movies // 100, 10), dim)).astype(np.float32)
    which = rng.integers(0, len(centers), size=movies)
    candidates = centers[which] + 0.5 * rng.normal(size=(movies, dim)).astype(np.float32)
    asks = centers[rng.integers(0, len(centers), size=queries)]
    asks = asks + 0.5 * rng.normal(size=asks.shape).astype(np.float32)
    return candidates, asks.astype(np.float32)


def timed_queries(index, queries, k: int) -> tuple:
    index(queries[:1], k=k)  # warm up
    ids, latencies = [], []
    for q in queries:
        started = time.perf_counter()
        _, found = index(q[None, :], k=k)
        latencies.append((time.perf_counter() - started) * 1000)
        ids.append(found.numpy()[0])
    return np.array(ids), np.array(latencies)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movies", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=32)
    args = parser.parse_args(argv)
    candidates, queries = synthetic(args.movies, args.queries, args.dim)
    k = 10
    rows = {}
    exact = None
    for kind in export.INDEXES:
        started = time.perf_counter()
        index = export.make_index(kind, candidates, np.arange(len(candidates)), k)
        build = time.perf_counter() - started
        ids, latencies = timed_queries(index, queries, k)
        if exact is None:
            exact = ids
        recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, exact)])
        rows[kind] = (recall, np.percentile(latencies, 50), np.percentile(latencies, 99), build)
    print(f"{args.movies} candidates x {args.dim} dims, {args.queries} single queries, k={k}")
    print(f"{'index':<12}{'recall@10':>10}{'p50 ms':>9}{'p99 ms':>9}{'build s':>9}")
    for kind, (recall, p50, p99, build) in rows.items():
        print(f"{kind:<12}{recall:10.4f}{p50:9.3f}{p99:9.3f}{build:9.1f}")
    bf, sc = rows["brute_force"], rows["scann"]
    print(f"scann: recall@10 {sc[0]:.4f} (target >= 0.95), p50 x{bf[1] / sc[1]:.1f} faster "
          f"than brute force")


if __name__ == "__main__":
    main()

"""Serving benchmark: latency and throughput of `movierec serve` under a bounded load.

Starts the server as a real subprocess on a loopback ephemeral port over --model-base,
sends --requests requests (default 5,000) at each concurrency (default 1, 8 and 32) for
each request kind of --signatures: `recommend` (one user per request), `recommend_history`
(`recommend` for one user with a request history of HISTORY_LEN ratings: random catalog
movies rated 1..5 at increasing timestamps; every other user unknown to the model) and
`serving_default` (one b64 tf.Example per request), and prints p50/p95/p99 latency,
throughput and errors, beside the in-process SavedModel call (the same signature of the
loaded TF2 module, as `movierec recommend` calls it, one request at a time; the server runs
the version as an inlined graph in a Session instead, which takes less per call).

    .venv/bin/python benchmarks/serving_latency.py --model-base output/serving [--requests 1000]
        [--concurrency 1,8,32] [--threads 4] [--workers 2] [--tf-threads 1]
        [--signatures recommend,recommend_history] [--json results.json]

--threads, --workers and --tf-threads are the server's (`movierec serve`); the server CPU
column counts its workers too.

The load goes to 127.0.0.1 only, over persistent HTTP/1.1 connections (one per client
thread; each request's bytes prepared once, each answer read by its Content-Length:
Connection below), and stops by itself after the bounded number of requests.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[i]


def summarize(latencies, seconds, errors):
    values = sorted(latencies)
    return {"requests": len(values) + errors, "errors": errors,
            "p50_ms": percentile(values, 50) * 1e3, "p95_ms": percentile(values, 95) * 1e3,
            "p99_ms": percentile(values, 99) * 1e3,
            "mean_ms": statistics.fmean(values) * 1e3 if values else float("nan"),
            "throughput_rps": len(values) / seconds if seconds > 0 else float("nan")}


# ---------------------------------------------------------------------------- the server
def start_server(model_base: str, threads: int, log_path: str, extra: tuple = ()):
    ready = os.path.join(tempfile.mkdtemp(prefix="movierec-bench-"), "ready")
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "serve", "--model-base", model_base,
         "--host", "127.0.0.1", "--port", "0", "--threads", str(threads),
         "--ready-file", ready, *extra],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while not os.path.exists(ready):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise SystemExit(f"the server did not start (log: {log_path})")
        time.sleep(0.1)
    host, port = open(ready).read().split()
    return proc, host, int(port)


def stop_server(proc) -> int:
    proc.terminate()
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


# ------------------------------------------------------------------------------ the load
def cpu_seconds(pid=None) -> float:
    """User + system CPU seconds of a process (this one by default) and its children's
    (the server's workers), from /proc."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(child) for child in _children(pid))  # --workers'


def _children(pid) -> list:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


class Connection:
    """One persistent HTTP/1.1 connection that sends prepared POSTs and reads each answer
    by its Content-Length. It takes about a quarter of http.client's CPU per request
    (docs/benchmarks.md). That matters on a small machine, where the load generator shares
    the cores with the server and its time shows up in the latencies it measures."""

    def __init__(self, host: str, port: int, timeout: float = 30):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def _fill(self, buf: bytes) -> bytes:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        return buf + chunk

    def post(self, request: bytes) -> tuple[int, bytes]:
        """(status, body) of one prepared request (post_request's bytes)."""
        self.sock.sendall(request)
        buf = self.buffer
        while (head_end := buf.find(b"\r\n\r\n")) < 0:
            buf = self._fill(buf)
        head = buf[:head_end].split(b"\r\n")
        length = None
        for line in head[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise RuntimeError(f"an answer without Content-Length: {head[0]!r}")
        end = head_end + 4 + length
        while len(buf) < end:
            buf = self._fill(buf)
        self.buffer = buf[end:]
        return int(head[0].split()[1]), buf[head_end + 4:end]

    def close(self):
        self.sock.close()


def post_request(host: str, port: int, path: str, body: bytes) -> bytes:
    """The bytes of an HTTP/1.1 POST of a JSON body, made once and sent many times."""
    return (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode("ascii") + body


def run_load(host, port, path, bodies, total, concurrency):
    """`total` POSTs of bodies (cycled) from `concurrency` threads, each with one
    persistent connection. Returns (latencies in seconds, wall seconds, errors)."""
    requests = [post_request(host, port, path, body) for body in bodies]
    lock = threading.Lock()
    counter = iter(range(total))
    latencies, errors, first_errors = [], [0], []

    def worker():
        conn = Connection(host, port)
        mine = []
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            request = requests[i % len(requests)]
            started = time.perf_counter()
            try:
                status, data = conn.post(request)
                elapsed = time.perf_counter() - started
                if status != 200:
                    raise RuntimeError(f"HTTP {status}: {data[:200]!r}")
                if not mine and "predictions" not in json.loads(data):  # read whole
                    raise RuntimeError(f"not an answer: {data[:200]!r}")
                mine.append(elapsed)
            except Exception as e:  # noqa: BLE001 - counted
                with lock:
                    errors[0] += 1
                    if len(first_errors) < 3:
                        first_errors.append(repr(e))
                conn.close()
                conn = Connection(host, port)
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    for e in first_errors:
        print(f"    error: {e}", file=sys.stderr)
    return latencies, wall, errors[0]


# ------------------------------------------------------------------------ the request mix
HISTORY_LEN = 200  # ratings per recommend_history request
RECOMMEND_HISTORY = "recommend_history"  # a request kind: recommend with a history
TARGETS = ("recommend", RECOMMEND_HISTORY)  # p50 <= 5 ms, p99 <= 20 ms at concurrency 8


def history_requests(ids: list, n: int = 500, seed: int = 1, length: int = HISTORY_LEN):
    """(users, histories) of n `recommend_history` requests: every other user a known
    ML-100K id (1..943), the others unknown; each history `length` distinct random catalog
    movies rated 1..5 (integers), timestamps increasing (oldest first)."""
    rng = random.Random(seed)
    users, histories = [], []
    for i in range(n):
        users.append(str(rng.randint(1, 943)) if i % 2 == 0 else f"guest-{i}")
        movies = rng.sample(ids, min(length, len(ids)))
        start = 880_000_000 + rng.randint(0, 10 ** 7)
        histories.append({"history_movie_ids": movies,
                          "history_ratings": [float(rng.randint(1, 5)) for _ in movies],
                          "history_timestamps": [start + 60 * j for j in range(len(movies))]})
    return users, histories


def request_bodies(model_dir: str, n: int = 500, seed: int = 0):
    """(the loaded model, {request kind: request bodies}, {request kind: the same requests
    as in-process inputs})."""
    import numpy as np
    import tensorflow as tf

    from serving.model import movie_catalog
    from trainer import examples as ex
    from trainer import features as F
    from trainer import saved_model
    from trainer import signatures as S

    rng = random.Random(seed)
    model = saved_model.load(model_dir)
    ids, titles = movie_catalog(model)
    users = [str(rng.randint(1, 1000)) for _ in range(n)]
    recommend = [json.dumps({"signature_name": S.RECOMMEND, "instances": [u]}).encode()
                 for u in users]
    examples = []
    for u in users:
        m = rng.randrange(len(ids))
        examples.append(ex.serialize({
            F.USER_ID: u, F.TIMESTAMP: 880000000 + rng.randint(0, 10 ** 7),
            F.USER_AGE: rng.randint(18, 70), F.USER_GENDER: "F",
            F.USER_OCCUPATION: "writer", F.USER_ZIP: "55105",
            F.MOVIE_ID: ids[m], F.MOVIE_TITLE: titles[m], F.MOVIE_GENRES: ["Drama"],
            F.MOVIE_YEAR: 1995}))
    serving_default = [json.dumps({"instances": [{"b64": base64.b64encode(e).decode()}]})
                       .encode() for e in examples]
    history_users, histories = history_requests(ids, n)
    with_history = [json.dumps({"signature_name": S.RECOMMEND,
                                "instances": [{S.USER_ID: u, **h}]}).encode()
                    for u, h in zip(history_users, histories)]
    bodies = {S.RECOMMEND: recommend, S.SERVING_DEFAULT: serving_default,
              RECOMMEND_HISTORY: with_history}
    floors = {
        S.RECOMMEND: [{S.USER_ID: tf.constant([u])} for u in users],
        S.SERVING_DEFAULT: [{S.EXAMPLES: tf.constant([e])} for e in examples],
        RECOMMEND_HISTORY: [{
            S.USER_ID: tf.constant([u]),
            S.HISTORY_MOVIE_IDS: tf.constant([h[S.HISTORY_MOVIE_IDS]]),
            S.HISTORY_RATINGS: tf.constant([h[S.HISTORY_RATINGS]], tf.float32),
            S.HISTORY_TIMESTAMPS: tf.constant(np.array([h[S.HISTORY_TIMESTAMPS]], np.int64))}
            for u, h in zip(history_users, histories)],
    }
    return model, bodies, floors


def in_process_floor(model, name, feeds_list, total):
    """The signature called directly (tensors in, numpy out), one call at a time (`name`:
    a request kind)."""
    from trainer import saved_model

    name = "recommend" if name == RECOMMEND_HISTORY else name
    def fn(**feeds):  # the inputs a request may leave out filled in, as the server does
        return saved_model.call(model, name, **feeds)

    for feeds in feeds_list[:20]:
        {k: v.numpy() for k, v in fn(**feeds).items()}
    latencies = []
    started = time.perf_counter()
    for i in range(total):
        feeds = feeds_list[i % len(feeds_list)]
        t = time.perf_counter()
        {k: v.numpy() for k, v in fn(**feeds).items()}
        latencies.append(time.perf_counter() - t)
    return latencies, time.perf_counter() - started, 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-base", default="output/serving",
                        help="serving base with movierec/<version>/ (default output/serving)")
    parser.add_argument("--requests", type=int, default=5000,
                        help="requests per signature and concurrency (default 5000)")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--threads", type=int, default=1, help="server --threads")
    parser.add_argument("--workers", type=int, default=1, help="server --workers")
    parser.add_argument("--tf-threads", type=int, default=0, help="server --tf-threads")
    parser.add_argument("--signatures", default="recommend,recommend_history,serving_default",
                        help="request kinds (default recommend,recommend_history,"
                        "serving_default)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    from serving import versions

    model_base = os.path.abspath(args.model_base)
    model_dir = versions.resolve(versions.model_base(model_base))
    levels = [int(c) for c in args.concurrency.split(",")]
    signatures = args.signatures.split(",")
    print(f"model {model_dir}; {args.requests} requests per signature and concurrency "
          f"{levels}; {os.cpu_count()} CPUs", flush=True)

    model, bodies, floors = request_bodies(model_dir)
    unknown = sorted(set(signatures) - set(bodies))
    if unknown:
        raise SystemExit(f"unknown request kind {unknown[0]!r} ({', '.join(bodies)})")
    results = []
    log_path = os.path.join(tempfile.gettempdir(), "movierec-bench-server.log")
    proc, host, port = start_server(model_base, args.threads, log_path,
                                    ("--workers", str(args.workers),
                                     "--tf-threads", str(args.tf_threads)))
    try:
        path = "/v1/models/movierec:predict"
        for name in signatures:
            run_load(host, port, path, bodies[name], 200, 4)  # warm-up
            for c in levels:
                cpu = cpu_seconds(proc.pid), cpu_seconds()
                lat, wall, errors = run_load(host, port, path, bodies[name], args.requests, c)
                n = max(1, args.requests)
                results.append({"signature": name, "mode": "http", "concurrency": c,
                                **summarize(lat, wall, errors),
                                "server_cpu_ms": (cpu_seconds(proc.pid) - cpu[0]) / n * 1e3,
                                "client_cpu_ms": (cpu_seconds() - cpu[1]) / n * 1e3})
                _print_row(results[-1])
    finally:
        rc = stop_server(proc)
    for name in signatures:
        lat, wall, errors = in_process_floor(model, name, floors[name], args.requests)
        results.append({"signature": name, "mode": "in-process", "concurrency": 1,
                        **summarize(lat, wall, errors)})
        _print_row(results[-1])
    print(f"server exit code after SIGTERM: {rc} (log: {log_path})")
    for r in results:
        if r["signature"] in TARGETS and (r["mode"], r["concurrency"]) == ("http", 8):
            met = r["p50_ms"] <= 5 and r["p99_ms"] <= 20 and r["errors"] == 0
            print(f"target ({r['signature']} at concurrency 8: p50 <= 5 ms, p99 <= 20 ms, "
                  f"0 errors): {'met' if met else 'MISSED'} (p50 {r['p50_ms']:.2f} ms, "
                  f"p99 {r['p99_ms']:.2f} ms, {r['errors']} errors)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": model_dir, "results": results, "server_exit_code": rc}, f,
                      indent=1)
    return 0 if rc == 0 and not any(r["errors"] for r in results) else 1


def _print_row(r):
    if not getattr(_print_row, "header", False):
        print(f"{'signature':<17} {'mode':<10} {'conc':>4} {'requests':>8} {'errors':>6} "
              f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'req/s':>8} "
              f"{'server CPU ms/req':>17} {'client CPU ms/req':>17}")
        _print_row.header = True
    print(f"{r['signature']:<17} {r['mode']:<10} {r['concurrency']:>4} {r['requests']:>8} "
          f"{r['errors']:>6} {r['p50_ms']:>7.2f} {r['p95_ms']:>7.2f} {r['p99_ms']:>7.2f} "
          f"{r['throughput_rps']:>8.0f} {r.get('server_cpu_ms', float('nan')):>17.2f} "
          f"{r.get('client_cpu_ms', float('nan')):>17.2f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())

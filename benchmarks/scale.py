"""Scale benchmark: what a whole `movierec run` costs as the ratings grow 10x at a time.

For each size (default: the real ML-100K, then synthetic 1M and 10M ratings written by
`movierec synth`) and each --beam-workers value (default 1 and 2), runs `movierec run` as a
subprocess on a fresh output directory and measures

  - wall time of the whole command (process start-up and TensorFlow import included),
  - wall time per component (from the progress lines the CLI prints,
    `[  12.3s] ComponentName   done   4.5s`),
  - peak RSS of the whole process tree (the CLI and every process it starts, Beam's worker
    processes included: /proc polled every --poll seconds, RSS summed over processes;
    shared pages count once per process, so this is an upper bound on what the tree holds),

then prints one table, how each cost grows per 10x ratings, and writes scale.json into
--work-dir.

    .venv/bin/python benchmarks/scale.py [--sizes 100k,1m,10m] [--beam-workers 1,2]
        [--work-dir /tmp/movierec-scale] [--data-dir ../shared/data/ml-100k]
        [--hparam epochs=1 ...] [--timeout SECONDS] [--regenerate] [--keep-outputs]
        [-- any other `movierec run` arguments]

Sizes: `100k` is the real ML-100K from --data-dir (ml-100k layout, with user features)
unless --synthetic-100k; any other size (`3k`, `1m`, `10m`, `2.5m`, `250000`) is synthetic
data in the ml-25m layout (ratings.csv/movies.csv, no user features) with MovieLens' shape:
R/150 users and 3.7*sqrt(R) movies (1M: 6,666 users x 3,700 movies, as ML-1M's 6,040 x
3,706; 10M: 66,666 x 11,700, as ML-10M's 69,878 x 10,681). Synthetic directories are kept
in --work-dir/data and reused while their synth.json matches.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
MOVIEREC = str(pathlib.Path(sys.executable).parent / "movierec")
PAGE = os.sysconf("SC_PAGE_SIZE")
SYNTH_SEED = 0
# The components that cost something, in pipeline order, and the names the table uses.
MAIN_COMPONENTS = {"MovieLensExampleGen": "ExampleGen", "StatisticsGen": "Stats",
                   "Transform": "Transform", "Tuner": "Tuner", "Trainer": "Trainer",
                   "Evaluator": "Evaluator", "RetrievalEvaluator": "RetrEval"}
_PROGRESS = re.compile(r"^\[\s*([\d.]+)s\]\s+(\S+)\s+(done|cached)\s+([\d.]+)s\s*$")
_FINISHED = re.compile(r"^finished in ([\d.]+) s")
_RATING = re.compile(r"rating\s+rmse\s+(\S+)\s+mae\s+(\S+)\s+examples\s+(\S+)")
_TOP = re.compile(r"top(\d+)\s+(\S+)")


def _env() -> dict:
    env = dict(os.environ)
    env["TF_USE_LEGACY_KERAS"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["PYTHONUNBUFFERED"] = "1"
    return env


# --------------------------------------------------------------------- measuring a process
def _proc_table() -> dict:
    """pid -> (parent pid, session id, rss bytes) of every process we can read."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            with open(f"/proc/{entry}/statm", "rb") as f:
                rss_pages = int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        fields = stat[stat.rindex(b")") + 2:].split()
        table[int(entry)] = (int(fields[1]), int(fields[3]), rss_pages * PAGE)
    return table


def tree_rss(root: int) -> tuple[int, int]:
    """(summed RSS bytes, process count) of `root`, its descendants and its session."""
    table = _proc_table()
    children = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    members, stack = set(), [root]
    while stack:
        pid = stack.pop()
        if pid in table and pid not in members:
            members.add(pid)
            stack.extend(children.get(pid, ()))
    # a started process is a session leader (start_new_session): orphans keep the session
    members |= {pid for pid, (_, sid, _) in table.items() if sid == root}
    return sum(table[p][2] for p in members), len(members)


_NOISE = ("Exception ignored in: <function AtomicFunction.__del__",
          "Traceback (most recent call last):", "atomic_function.py",
          "TypeError: 'NoneType' object is not subscriptable")


def _is_noise(line: str) -> bool:
    """TensorFlow's "Exception ignored in AtomicFunction.__del__" tracebacks (printed when
    the garbage collector frees functions): kept in the log, not echoed."""
    return any(marker in line for marker in _NOISE)


def run_measured(cmd: list, log_path: pathlib.Path, poll: float = 0.5,
                 timeout: float | None = None, echo: str | None = "    ") -> dict:
    """Runs `cmd`, echoing its output (indented) and saving it to log_path; returns wall
    seconds, peak tree RSS, exit code and the output lines."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    arrived: list[float] = []  # seconds after start at which each line came
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env(), cwd=ROOT, start_new_session=True)

    def read():
        with open(log_path, "w") as log:
            for line in proc.stdout:
                arrived.append(round(time.perf_counter() - started, 2))
                lines.append(line.rstrip("\n"))
                log.write(line)
                log.flush()
                if echo is not None and not _is_noise(line):
                    print(echo + line.rstrip("\n"), flush=True)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    peak, peak_procs, timed_out = 0, 0, False
    while proc.poll() is None:
        rss, count = tree_rss(proc.pid)
        peak, peak_procs = max(peak, rss), max(peak_procs, count)
        if timeout and time.perf_counter() - started > timeout:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)  # the session this call started
            break
        time.sleep(poll)
    rc = proc.wait()
    wall = time.perf_counter() - started
    reader.join(timeout=10)
    return {"cmd": cmd, "rc": rc, "timed_out": timed_out, "wall_s": round(wall, 2),
            "peak_rss_mb": round(peak / 2**20, 1), "peak_processes": peak_procs,
            "lines": lines, "arrived": arrived, "log": str(log_path)}


def run_phases(result: dict) -> dict:
    """Where a `movierec run`'s wall time went, from when its lines arrived: start-up (to
    the first line, which the CLI prints once TensorFlow and TFX are imported), the
    pipeline (to the last component's line), then the summary (metrics read back from
    ML Metadata and TFMA) and exit."""
    lines, arrived = result["lines"], result.get("arrived") or []
    progress = [t for line, t in zip(lines, arrived) if _PROGRESS.match(line)]
    if not arrived or not progress:
        return {}
    return {"startup_s": arrived[0], "pipeline_s": round(progress[-1] - arrived[0], 2),
            "summary_and_exit_s": round(result["wall_s"] - progress[-1], 2)}


def parse_run_output(lines: list[str]) -> dict:
    """Components' seconds and states, the pipeline's own time, and the summary metrics
    from `movierec run`'s output."""
    components, states, pipeline_s, metrics = {}, {}, None, {}
    for line in lines:
        if m := _PROGRESS.match(line):
            components[m.group(2)] = float(m.group(4))
            states[m.group(2)] = m.group(3)
        elif m := _FINISHED.match(line):
            pipeline_s = float(m.group(1))
        elif m := _RATING.search(line):
            for key, value in zip(("rmse", "mae", "example_count"), m.groups()):
                if value != "-":
                    metrics[key] = float(value)
        elif line.strip().startswith("retrieval"):
            for k, value in _TOP.findall(line):
                if value != "-":
                    metrics[f"top_{k}_accuracy"] = float(value)
    return {"components": components, "states": states, "pipeline_s": pipeline_s,
            "metrics": metrics}


def run_pipeline(data_dir: str, output_dir: pathlib.Path, run_args: list, log_path,
                 poll: float = 0.5, timeout: float | None = None, fresh: bool = True) -> dict:
    """One measured `movierec run`; a fresh output directory unless fresh=False."""
    if fresh and output_dir.exists():
        shutil.rmtree(output_dir)
    result = run_measured([MOVIEREC, "run", "--data-dir", str(data_dir), "--output-dir",
                           str(output_dir), *run_args], pathlib.Path(log_path), poll, timeout)
    result.update(parse_run_output(result["lines"]))
    result["phases"] = run_phases(result)
    if result["rc"] != 0:
        result["error"] = next((line for line in reversed(result["lines"])
                                if "error" in line.lower()), "\n".join(result["lines"][-3:]))
    return result


def synth_data(work: pathlib.Path, label: str, ratings: int, layout: str = "ml-25m",
               users: int | None = None, movies: int | None = None,
               regenerate: bool = False) -> dict:
    """A synthetic directory of `ratings` ratings under work/data, written by `movierec
    synth` unless one with the same parameters is there; with how long writing took."""
    users = users or max(20, ratings // 150)
    movies = movies or max(50, round(3.7 * math.sqrt(ratings)))
    directory = work / "data" / label
    manifest = directory / "synth.json"
    wanted = {"users": users, "movies": movies, "ratings": ratings, "seed": SYNTH_SEED,
              "requested_layout": layout}
    if manifest.is_file() and not regenerate:
        summary = json.loads(manifest.read_text())
        if all(summary.get(k) == v for k, v in wanted.items()):
            return {**summary, "directory": str(directory), "reused": True}
    result = run_measured([MOVIEREC, "synth", "--users", str(users), "--movies", str(movies),
                           "--ratings", str(ratings), "--output", str(directory), "--seed",
                           str(SYNTH_SEED), "--layout", layout, "--force"],
                          work / "logs" / f"synth-{label}.log")
    if result["rc"] != 0:
        raise SystemExit(f"movierec synth failed: {' '.join(result['lines'][-1:])}")
    summary = json.loads(manifest.read_text())
    return {**summary, "directory": str(directory), "reused": False,
            "command_wall_s": result["wall_s"], "command_peak_rss_mb": result["peak_rss_mb"]}


def parse_size(text: str) -> int:
    value = text.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(value[-1:], 1)
    number = float(value[:-1] if scale > 1 else value) * scale
    if number < 1 or number != int(number):
        raise argparse.ArgumentTypeError(f"bad size {text!r}")
    return int(number)


def split_passthrough(argv: list) -> tuple[list, list]:
    """(this script's arguments, `movierec run` arguments after a lone `--`)."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def machine() -> dict:
    mem = next((int(line.split()[1]) // 1024 for line in open("/proc/meminfo")
                if line.startswith("MemTotal")), None)
    return {"cpus": os.cpu_count(), "memory_mb": mem, "python": platform.python_version(),
            "platform": platform.platform(), "date": time.strftime("%Y-%m-%d %H:%M")}


# ---------------------------------------------------------------------------------- report
def growth(a: float | None, b: float | None, ratings_a: int, ratings_b: int) -> float | None:
    """Factor per 10x ratings between two measurements: (b/a) ** (1 / log10(rb/ra))."""
    if not a or not b or ratings_b <= ratings_a:
        return None
    return (b / a) ** (1.0 / math.log10(ratings_b / ratings_a))


def _cell(value, fmt="{:.1f}", width=9) -> str:
    return f"{'-' if value is None else fmt.format(value):>{width}}"


def print_table(rows: list) -> None:
    names = [n for n in MAIN_COMPONENTS if any(n in r.get("components", {}) for r in rows)]
    header = (f"{'size':<8}{'ratings':>11}{'workers':>8}{'wall s':>9}{'peak MB':>9}"
              + "".join(f"{MAIN_COMPONENTS[n]:>11}" for n in names)
              + f"{'others':>8}{'outside':>9}{'startup':>9}{'procs':>6}  status")
    print(header)
    print("-" * len(header))
    for r in rows:
        comps = r.get("components", {})
        others = sum(v for k, v in comps.items() if k not in MAIN_COMPONENTS)
        outside = r["wall_s"] - sum(comps.values()) if comps else None
        status = ("ok" if r["rc"] == 0 else "TIMEOUT" if r.get("timed_out")
                  else f"rc {r['rc']}")
        print(f"{r['size']:<8}{r['ratings']:>11,}{r['workers']:>8}{r['wall_s']:>9.1f}"
              f"{r['peak_rss_mb']:>9.0f}"
              + "".join(_cell(comps.get(n), width=11) for n in names)
              + f"{others:>8.1f}{_cell(outside)}{_cell(r.get('phases', {}).get('startup_s'))}"
              f"{r['peak_processes']:>6}  {status}")
    print("(seconds; 'others': the small components together; 'outside': the command's "
          "wall time outside any component (start-up, orchestration, the summary); "
          "'startup': until the CLI's first line, i.e. Python, TensorFlow and TFX imports)")


def growth_report(rows: list) -> list:
    """Per workers value and consecutive sizes: cost factor per 10x ratings."""
    out = []
    for workers in sorted({r["workers"] for r in rows}):
        series = sorted((r for r in rows if r["workers"] == workers and r["rc"] == 0),
                        key=lambda r: r["ratings"])
        for a, b in zip(series, series[1:]):
            item = {"workers": workers, "from": a["size"], "to": b["size"],
                    "ratings_ratio": b["ratings"] / a["ratings"],
                    "wall": growth(a["wall_s"], b["wall_s"], a["ratings"], b["ratings"]),
                    "peak_rss": growth(a["peak_rss_mb"], b["peak_rss_mb"], a["ratings"],
                                       b["ratings"])}
            for name in MAIN_COMPONENTS:
                item[name] = growth(a["components"].get(name), b["components"].get(name),
                                    a["ratings"], b["ratings"])
            item["layout_changes"] = a["layout"] != b["layout"]
            out.append(item)
    return out


def print_growth(items: list) -> None:
    if not items:
        return
    print("\ncost growth per 10x ratings (x1 = flat, x10 = linear in ratings):")
    for g in items:
        parts = [f"wall x{g['wall']:.2f}" if g["wall"] else "wall -",
                 f"peak RSS x{g['peak_rss']:.2f}" if g["peak_rss"] else "peak RSS -"]
        parts += [f"{MAIN_COMPONENTS[n]} x{g[n]:.2f}" for n in MAIN_COMPONENTS if g.get(n)]
        note = " (layouts differ: real ml-100k vs synthetic ml-25m)" if g["layout_changes"] \
            else ""
        print(f"  workers {g['workers']}  {g['from']:>6} -> {g['to']:<6} "
              f"({g['ratings_ratio']:.3g}x ratings): " + ", ".join(parts) + note)


# ------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    argv, passthrough = split_passthrough(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Arguments after a lone `--` go to every `movierec run`.")
    parser.add_argument("--sizes", default="100k,1m,10m",
                        help="comma-separated ratings counts (k/m suffixes); 100k = the real "
                        "ML-100K (default 100k,1m,10m)")
    parser.add_argument("--beam-workers", default="1,2",
                        help="comma-separated --beam-workers values (default 1,2)")
    parser.add_argument("--work-dir", default="/tmp/movierec-scale")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared/data/ml-100k"),
                        help="the real ML-100K (for size 100k)")
    parser.add_argument("--synthetic-100k", action="store_true",
                        help="size 100k is synthetic (ml-25m layout) like the others")
    parser.add_argument("--hparam", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to every run, e.g. epochs=1")
    parser.add_argument("--timeout", type=float, default=0,
                        help="kill a run after this many seconds (default: no limit)")
    parser.add_argument("--poll", type=float, default=0.5,
                        help="seconds between RSS samples (default 0.5)")
    parser.add_argument("--regenerate", action="store_true",
                        help="rewrite synthetic data even when a matching copy exists")
    parser.add_argument("--keep-outputs", action="store_true",
                        help="keep each run's output directory (default: only its logs)")
    args = parser.parse_args(argv)
    try:
        sizes = [(s.strip(), parse_size(s)) for s in args.sizes.split(",") if s.strip()]
        workers = [int(w) for w in args.beam_workers.split(",") if w.strip()]
    except (ValueError, argparse.ArgumentTypeError) as e:
        parser.error(str(e))
    work = pathlib.Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    run_args = [f"--hparam={h}" for h in args.hparam] + passthrough

    datasets = {}
    for label, ratings in sizes:
        real = label.lower() == "100k" and not args.synthetic_100k
        if real:
            if not (pathlib.Path(args.data_dir) / "u.data").is_file():
                raise SystemExit(f"no ML-100K in {args.data_dir} (or use --synthetic-100k)")
            datasets[label] = {"directory": str(pathlib.Path(args.data_dir).resolve()),
                               "source": "real", "layout": "ml-100k", "ratings": 100_000}
        else:
            print(f"data {label}: movierec synth ({ratings:,} ratings) ...", flush=True)
            summary = synth_data(work, label, ratings, regenerate=args.regenerate)
            datasets[label] = {**summary, "source": "synthetic"}
            print(f"  {'reused' if summary['reused'] else 'written'}: {summary['directory']} "
                  f"({summary['users']:,} users, {summary['movies']:,} movies, "
                  f"{summary['ratings_file_bytes'] / 2**20:.0f} MiB; synth "
                  f"{summary['seconds']:.1f} s)", flush=True)

    rows = []
    results_path = work / "scale.json"

    def save():
        results_path.write_text(json.dumps({
            "machine": machine(), "argv": sys.argv, "run_args": run_args,
            "datasets": datasets,
            "runs": [{k: v for k, v in r.items() if k not in ("lines", "arrived")}
                     for r in rows],
            "growth": growth_report(rows)}, indent=1))

    for label, ratings in sizes:
        data = datasets[label]
        for w in workers:
            name = f"{label}-w{w}"
            out = work / "runs" / name
            print(f"\n== {name}: movierec run on {data['directory']} ({data['source']}, "
                  f"{data['ratings']:,} ratings), --beam-workers {w}", flush=True)
            result = run_pipeline(data["directory"], out, ["--beam-workers", str(w), *run_args],
                                  work / "logs" / f"{name}.log", args.poll,
                                  args.timeout or None)
            result.update(size=label, ratings=data["ratings"], workers=w,
                          layout=data["layout"], source=data["source"])
            for full_log in sorted((out / "logs").glob("run-*.log")):
                shutil.copy(full_log, work / "logs" / f"{name}-{full_log.name}")
            if not args.keep_outputs:
                shutil.rmtree(out, ignore_errors=True)
            print(f"   -> {result['wall_s']:.1f} s wall, peak RSS "
                  f"{result['peak_rss_mb']:.0f} MB over {result['peak_processes']} "
                  f"processes, rc {result['rc']}", flush=True)
            rows.append(result)
            save()

    print()
    print_table(rows)
    print_growth(growth_report(rows))
    save()
    print(f"\nwrote {results_path}")
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

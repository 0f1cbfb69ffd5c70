"""ExampleGen alone: MovieLensExampleGen's executor on one directory, timed, in this process.

    PYTHONPATH=. .venv/bin/python benchmarks/example_gen.py --data-dir DIR [--workers 1,2]
        [--split random] [--work-dir /tmp/movierec-example-gen] [--repeat 1]

Without --data-dir, 1M synthetic ratings (ml-25m layout, 6,666 users x 3,700 movies, as
benchmarks/scale.py's `1m`) are written into --work-dir/data first (and reused). For each
--workers value (1: Beam in-process, N > 1: N multi-processing workers) prints the wall
time of Executor.Do (preflight, the time cutoff where the split needs one, the Beam
pipeline), the CPU seconds it took (this process and Beam's worker processes: less
sensitive than wall time to other work on the machine) and the counts and read
statistics the executor records on its Examples.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import shutil
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def beam_args(workers: int) -> list:
    if workers > 1:
        return ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
    return ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


def _cpu_seconds() -> float:
    """User + system CPU of this process and of its finished children (Beam's workers)."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def run(data_dir: str, out: str, workers: int, split: str) -> dict:
    from tfx.types import standard_artifacts

    from components.movielens_example_gen import executor, movielens

    examples = standard_artifacts.Examples()
    examples.uri = out
    context = executor.Executor.Context(beam_pipeline_args=beam_args(workers))
    started, cpu = time.perf_counter(), _cpu_seconds()
    executor.Executor(context).Do({}, {"examples": [examples]}, {
        "data_dir": data_dir, "layout": movielens.detect_layout(data_dir), "split": split,
        "seed": 42, "eval_fraction": 0.2, "input_fingerprint": ""})
    seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    properties = {name: examples.get_string_custom_property(name)
                  for name in ("split_counts", "ratings_per_worker")}
    return {"workers": workers, "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
            **properties,
            "read_ranges": examples.get_int_custom_property("read_ranges")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--split", default="random")
    parser.add_argument("--work-dir", default="/tmp/movierec-example-gen")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)
    work = pathlib.Path(args.work_dir)
    data_dir = args.data_dir
    if not data_dir:
        from components.movielens_example_gen import synth

        data = work / "data" / "1m"
        if not (data / "synth.json").is_file():
            synth.write_dataset(data, users=6666, movies=3700, ratings=1_000_000, seed=0,
                                overwrite=True)
        data_dir = str(data)
    for workers in [int(w) for w in args.workers.split(",")]:
        for attempt in range(args.repeat):
            out = work / f"out-{workers}-{attempt}"
            shutil.rmtree(out, ignore_errors=True)
            print(json.dumps(run(data_dir, str(out), workers, args.split)), flush=True)
            shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

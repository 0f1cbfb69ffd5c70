"""What autograph costs the Trainer: `train_and_export` with autograph leaving Keras 2's own
code as written (trainer/tracing.py, as shipped) against the baseline of TensorFlow 2.16's own
rules (which convert `tf_keras` function by function at every trace), in one invocation.

Each side runs in a fresh subprocess on the same examples and Transform graph (those of the
latest run in --output-dir's metadata store; without one, a `movierec run` on synthetic
ml-100k-layout data first) and reports the fit's seconds (its first epoch holds the train
step's trace), the export's, the whole `train_and_export`, and the per-epoch losses, which
must agree to the last digit: the rule changes how the graph is built, not the graph.

    .venv/bin/python benchmarks/tracing.py [--output-dir OUT] [--epochs 3]
        [--work-dir /tmp/movierec-tracing]

The model is the shipped default (HParams), trained with batch size 256.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before anything imports TensorFlow
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository's packages

_RESULT_PREFIX = "TRACING_RESULT "
# the tests' tiny data: where the trace is most of the Trainer's time
SYNTH = ["--users", "60", "--movies", "80", "--ratings", "3000", "--layout", "ml-100k",
         "--seed", "1"]
RUN_ARGS = ["--epochs", "3", "--batch-size", "256", "--rmse-upper-bound", "2.0",
            "--beam-pipeline-args=--direct_num_workers=1 --direct_running_mode=in_memory"]


def _run_inputs(output: pathlib.Path) -> tuple:
    """(Examples URI, TransformGraph URI) of the latest run in OUT's metadata store."""
    from pipeline import metadata

    store = metadata.connect(str(output / "metadata.sqlite"))
    run = metadata.find_run(store)
    found = [metadata.run_artifacts(store, run, kind) for kind in ("Examples", "TransformGraph")]
    if not all(found):
        raise SystemExit(f"error: the latest run in {output} has no Examples or TransformGraph")
    return found[0][-1].uri, found[1][-1].uri


def _movierec(*args: str) -> None:
    subprocess.run([str(ROOT / ".venv" / "bin" / "movierec"), *args], check=True,
                   stdout=subprocess.DEVNULL)


def child(side: str, examples: str, transform: str, serving: str, hparams: dict) -> dict:
    """One side, in this process: train_and_export timed by phase."""
    started = time.perf_counter()
    from trainer import export, run
    from trainer import model  # noqa: F401  (adds the rule)
    from trainer.model import HParams

    if side == "baseline":  # TensorFlow's own rules: autograph converts tf_keras too
        from tensorflow.python.autograph.core import config
        from trainer.tracing import is_keras_rule

        config.CONVERSION_RULES = tuple(
            r for r in config.CONVERSION_RULES if not is_keras_rule(r))
    seconds = {"import": time.perf_counter() - started}

    def timed(name, function):
        def wrapper(*args, **kwargs):
            mark = time.perf_counter()
            result = function(*args, **kwargs)
            seconds[name] = time.perf_counter() - mark
            return result
        return wrapper

    run.fit = timed("fit", run.fit)
    export.save = timed("export", export.save)
    mark = time.perf_counter()
    summary = run.train_and_export([f"{examples}/Split-train/*"],
                                   [f"{examples}/Split-catalog/*"], transform, serving,
                                   HParams.from_dict(hparams))
    seconds["train_and_export"] = time.perf_counter() - mark
    return {"seconds": {k: round(v, 2) for k, v in seconds.items()},
            "history": summary["history"]}


def _side(side: str, examples: str, transform: str, work: pathlib.Path, hparams: dict):
    out = subprocess.run(
        [sys.executable, __file__, "--child", side, "--examples", examples,
         "--transform", transform, "--serving", str(work / f"model-{side}"),
         "--hparams-json", json.dumps(hparams)],
        check=True, capture_output=True, text=True).stdout
    line = next(x for x in out.splitlines() if x.startswith(_RESULT_PREFIX))
    return json.loads(line[len(_RESULT_PREFIX):])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", help="a movierec run's output directory (local)")
    parser.add_argument("--work-dir", default="/tmp/movierec-tracing")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--child", choices=["shipped", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--examples", help=argparse.SUPPRESS)
    parser.add_argument("--transform", help=argparse.SUPPRESS)
    parser.add_argument("--serving", help=argparse.SUPPRESS)
    parser.add_argument("--hparams-json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = child(args.child, args.examples, args.transform, args.serving,
                       json.loads(args.hparams_json))
        print(_RESULT_PREFIX + json.dumps(result), flush=True)
        return 0

    work = pathlib.Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    hparams = {"epochs": args.epochs, "batch_size": 256}
    output = pathlib.Path(args.output_dir) if args.output_dir else work / "output"
    if not args.output_dir and not (output / "pipeline").exists():
        _movierec("synth", *SYNTH, "--output", str(work / "ml-100k"), "--force")
        _movierec("run", "--data-dir", str(work / "ml-100k"), "--output-dir", str(output),
                  *RUN_ARGS)
    examples, transform = _run_inputs(output)
    results = {side: _side(side, examples, transform, work, hparams)
               for side in ("baseline", "shipped")}
    base, shipped = results["baseline"]["seconds"], results["shipped"]["seconds"]
    print(f"examples {examples}\ntransform graph {transform}\nhparams {hparams}")
    print(f"{'phase':18s} {'baseline s':>11s} {'shipped s':>10s} {'shipped/baseline':>17s}")
    for phase in ("fit", "export", "train_and_export"):
        print(f"{phase:18s} {base[phase]:11.2f} {shipped[phase]:10.2f} "
              f"{shipped[phase] / base[phase]:17.2f}")
    same = results["baseline"]["history"] == results["shipped"]["history"]
    print("per-epoch losses identical:", same)
    (work / "tracing.json").write_text(json.dumps({"hparams": hparams, **results}, indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

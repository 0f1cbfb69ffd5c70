"""What the TFX pipeline costs over a plain TFRS script that trains the same model.

One invocation on ML-100K measures, each as a fresh process timed from start to exit
(process start-up and TensorFlow import included):

  (a) cold    `movierec run` on a fresh output directory: the whole pipeline;
  (b) cached  the same command again on the same output directory;
  (c) script  this file with --plain-script, in a fresh subprocess: the MovieLens files read
              with components.movielens_example_gen.movielens and split with the executor's
              split function (same seed and eval fraction) into gzipped TFRecords of the
              same tf.Examples, trainer.preprocessing.preprocessing_fn analyzed on the train
              split with tf.Transform's Beam AnalyzeDataset in-process (on the committed
              schema of the layout, as the Transform component does), then
              trainer.run.train_and_export with the same HParams -- no TFX, no statistics,
              validation or evaluation.

and prints pipeline/script and cached/cold against the targets (cold <= 1.4x the script,
cached <= 0.15x cold), each component's share of the cold pipeline's wall time, and which
components the cached re-run executed again. Writes pipeline_cost.json into --work-dir.

    .venv/bin/python benchmarks/pipeline_cost.py [--data-dir ../shared/data/ml-100k]
        [--work-dir /tmp/movierec-cost] [--hparam KEY=VALUE ...] [--quick]
        [-- other `movierec run` arguments, also applied to the script's hyperparameters]

--quick: a small synthetic dataset (`movierec synth`, ml-100k layout, 5,000 ratings) and
--hparam epochs=1, to check the benchmark itself in a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before anything imports TensorFlow
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = pathlib.Path(__file__).resolve().parents[1]
_HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # the repository's packages

from pipeline.errors import exit_now  # noqa: E402


def _load_scale():
    """benchmarks/scale.py (the measuring helpers), loaded from its file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("movierec_benchmark_scale",
                                                  _HERE / "scale.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


scale = _load_scale()

TARGET_COLD = 1.4  # pipeline (cold) / plain script
TARGET_CACHED = 0.15  # cached re-run / cold run
_RESULT_PREFIX = "PLAIN_SCRIPT_RESULT "
QUICK_DATA = {"users": 200, "movies": 300, "ratings": 5000, "layout": "ml-100k"}


# ------------------------------------------------------------------- (c) the plain script
def plain_script(data_dir: str, out_dir: str, run_args: list) -> dict:
    """Reads, splits, analyzes and trains as the pipeline does, without TFX. Runs in a
    process of its own (--plain-script); returns its phases' seconds."""
    phases, mark = {}, time.perf_counter()

    def phase(name):
        nonlocal mark
        now = time.perf_counter()
        phases[name] = round(now - mark, 2)
        mark = now

    import functools

    import apache_beam as beam
    import tensorflow as tf
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tfx.utils import io_utils
    from tfx_bsl.public import tfxio

    from components.movielens_example_gen import executor, movielens, splits
    from pipeline import configs, options
    from trainer import features as F
    from trainer import preprocessing
    from trainer.model import HParams
    from trainer.run import train_and_export

    phase("import")
    # The same options, parsed and checked by `movierec run`'s own code.
    parser = argparse.ArgumentParser()
    options.add_setting_arguments(parser)
    args, _ = parser.parse_known_args(run_args)
    config = configs.from_options({**options.from_args(args), "data_dir": data_dir,
                                   "output_dir": out_dir})
    hparams = dict(config.hparams)
    hp = HParams.from_dict(hparams)
    layout = config.layout

    # Raw files -> joined tf.Examples, split as MovieLensExampleGen splits them.
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    movies = movielens.read_movies(data_dir, layout)
    users = movielens.read_users(data_dir, layout)
    files = movielens.layout_files(layout)
    encoder = executor.ExampleEncoder(movies, users)
    cutoff = (executor.time_cutoff(data_dir, layout, config.eval_fraction)
              if config.split == splits.TIME else 0)
    train_path, catalog_path = str(out / "train.tfrecord.gz"), str(out / "catalog.tfrecord.gz")
    counts = {F.TRAIN_SPLIT: 0, F.EVAL_SPLIT: 0}
    with tf.io.TFRecordWriter(train_path, options="GZIP") as train_writer:
        for file_name, fixed in splits.ratings_sources(config.split):
            for rating in movielens.iter_ratings(data_dir, layout, file_name):
                movielens.check_references(
                    rating, movies, users, {**files, "ratings": file_name or files["ratings"]})
                split = executor.split_of(rating, fixed, config.split, config.seed,
                                          config.eval_fraction, cutoff)
                counts[split] += 1
                if split == F.TRAIN_SPLIT:
                    train_writer.write(encoder.encode(rating))
    with tf.io.TFRecordWriter(catalog_path, options="GZIP") as catalog_writer:
        for movie in sorted(movies.values(), key=lambda m: m.movie_id):
            catalog_writer.write(executor.catalog_example(movie))
    phase("read_split_write")

    # tf.Transform's analysis of the train split, in-process Beam.
    schema = io_utils.parse_pbtxt_file(config.schema_file, schema_pb2.Schema())
    source = tfxio.TFExampleRecord(file_pattern=train_path, schema=schema,
                                   telemetry_descriptors=["movierec", "plain_script"])
    transform_dir = str(out / "transform")
    preprocessing_fn = functools.partial(
        preprocessing.preprocessing_fn,
        custom_config={F.TIMESTAMP_BUCKETS_CONFIG: config.timestamp_buckets}
        if config.timestamp_buckets is not None else {})
    with beam.Pipeline() as pipeline:
        with tft_beam.Context(temp_dir=str(out / "tft_tmp"), force_tf_compat_v1=False):
            raw = pipeline | "Read" >> source.BeamSource()
            transform_fn = ((raw, source.TensorAdapterConfig())
                            | "Analyze" >> tft_beam.AnalyzeDataset(preprocessing_fn))
            _ = transform_fn | "Write" >> tft_beam.WriteTransformFn(transform_dir)
    tft.TFTransformOutput(transform_dir).transform_features_layer()  # it loads
    phase("transform_analyze")

    # The Trainer's own function, unchanged: train, export with the serving signatures.
    summary = train_and_export([train_path], [catalog_path], transform_dir,
                               str(out / "serving" / str(int(time.time()))), hp,
                               log_dir=str(out / "logs"))
    phase("train_and_export")
    return {"phases": phases, "train_examples": counts[F.TRAIN_SPLIT],
            "eval_examples": counts[F.EVAL_SPLIT], "catalog": len(movies),
            "epochs": summary["epochs"], "trainer_seconds": summary["seconds"],
            "final_loss": (summary["history"].get("loss") or [None])[-1]}


# ------------------------------------------------------------------------------- measuring
def warm_up(work: pathlib.Path) -> float:
    """Imports the heavy libraries once in a throw-away process, so that no measured run
    pays for reading them from a cold disk cache (not counted)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import tensorflow, tensorflow_transform, tfx.v1, "
                    "tensorflow_recommenders, tensorflow_model_analysis, apache_beam"],
                   env=scale._env(), cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - started


def run_script(data_dir: str, work: pathlib.Path, run_args: list, poll: float) -> dict:
    out = work / "script"
    if out.exists():
        shutil.rmtree(out)
    result = scale.run_measured(
        [sys.executable, str(pathlib.Path(__file__).resolve()), "--plain-script",
         "--data-dir", data_dir, "--work-dir", str(out), "--", *run_args],
        work / "logs" / "script.log", poll=poll, echo=None)
    found = [line for line in result["lines"] if line.startswith(_RESULT_PREFIX)]
    if result["rc"] != 0 or not found:
        tail = "\n".join(result["lines"][-15:])
        raise SystemExit(f"the plain script failed (rc {result['rc']}):\n{tail}")
    result.update(json.loads(found[-1][len(_RESULT_PREFIX):]))
    return result


def _pipeline(data_dir, work, run_args, name, fresh, poll) -> dict:
    print(f"\n== ({name}) movierec run {'on a fresh' if fresh else 'again on the same'} "
          f"output directory", flush=True)
    result = scale.run_pipeline(data_dir, work / "pipeline", run_args,
                                work / "logs" / f"pipeline-{name}.log", poll=poll,
                                fresh=fresh)
    if result["rc"] != 0:
        raise SystemExit(f"movierec run ({name}) failed: {result.get('error')}")
    return result


def report(cold: dict, cached: dict, script: dict) -> dict:
    ratio_cold = cold["wall_s"] / script["wall_s"]
    ratio_cached = cached["wall_s"] / cold["wall_s"]

    def verdict(value, target):
        return "met" if value <= target else "NOT met"

    print(f"\n{'':<30}{'wall s':>9}{'peak MB':>9}")
    print(f"{'(a) pipeline, cold':<30}{cold['wall_s']:>9.1f}{cold['peak_rss_mb']:>9.0f}")
    print(f"{'(b) pipeline, cached re-run':<30}{cached['wall_s']:>9.1f}"
          f"{cached['peak_rss_mb']:>9.0f}")
    print(f"{'(c) plain TFRS script':<30}{script['wall_s']:>9.1f}{script['peak_rss_mb']:>9.0f}")
    print(f"\npipeline / script (cold): {ratio_cold:.2f}x   target <= {TARGET_COLD}x: "
          f"{verdict(ratio_cold, TARGET_COLD)}")
    print(f"cached / cold:            {ratio_cached:.2f}x   target <= {TARGET_CACHED}x: "
          f"{verdict(ratio_cached, TARGET_CACHED)}")

    print(f"\nshare of the cold pipeline's {cold['wall_s']:.1f} s:")
    comps = cold["components"]
    for name, seconds in sorted(comps.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<34}{seconds:>7.1f} s {100 * seconds / cold['wall_s']:>5.1f}%")
    outside = cold["wall_s"] - sum(comps.values())
    print(f"  {'(outside components)':<34}{outside:>7.1f} s "
          f"{100 * outside / cold['wall_s']:>5.1f}%")
    for name, run in (("cold", cold), ("cached", cached)):
        phases = run.get("phases") or {}
        if phases:
            print(f"{name} run: start-up (Python, TensorFlow, TFX imports) "
                  f"{phases['startup_s']:.1f} s, pipeline {phases['pipeline_s']:.1f} s, "
                  f"summary (metrics from MLMD/TFMA) and exit "
                  f"{phases['summary_and_exit_s']:.1f} s")

    print("\nplain script phases (s): " + ", ".join(
        f"{k} {v:.1f}" for k, v in script["phases"].items())
        + f"; process start-up and exit {script['wall_s'] - sum(script['phases'].values()):.1f}")
    executed = [n for n, s in cached["states"].items() if s != "cached"]
    again = ", ".join(f"{n} {cached['components'][n]:.1f} s" for n in executed) or "none"
    print(f"cached re-run: {len(cached['states']) - len(executed)} components cached, "
          f"executed again: {again}")
    return {"pipeline_over_script": round(ratio_cold, 3), "target_cold": TARGET_COLD,
            "cached_over_cold": round(ratio_cached, 3), "target_cached": TARGET_CACHED,
            "cold_met": ratio_cold <= TARGET_COLD, "cached_met": ratio_cached <= TARGET_CACHED,
            "component_share": {n: round(s / cold["wall_s"], 4) for n, s in comps.items()},
            "outside_components_s": round(outside, 1),
            "executed_in_cached_run": executed}


def main(argv=None) -> int:
    argv, passthrough = scale.split_passthrough(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="Arguments after a lone `--` go to `movierec "
                                     "run` and to the script's hyperparameters.")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared/data/ml-100k"))
    parser.add_argument("--work-dir", default="/tmp/movierec-cost")
    parser.add_argument("--hparam", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--quick", action="store_true",
                        help="small synthetic data and epochs=1: checks the benchmark")
    parser.add_argument("--poll", type=float, default=0.5,
                        help="seconds between RSS samples (default 0.5)")
    parser.add_argument("--no-warm-up", action="store_true",
                        help="do not import the libraries once before measuring")
    parser.add_argument("--plain-script", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.plain_script:  # (c), in its own process
        result = plain_script(args.data_dir, args.work_dir, passthrough)
        print(_RESULT_PREFIX + json.dumps(result), flush=True)
        exit_now(0)  # as the CLI exits: no TensorFlow teardown noise or cost

    work = pathlib.Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    hparams = list(args.hparam)
    data_dir = args.data_dir
    if args.quick:
        if not any(h.startswith("epochs=") for h in hparams):
            hparams.append("epochs=1")
        data = scale.synth_data(work, "quick", QUICK_DATA["ratings"], QUICK_DATA["layout"],
                                users=QUICK_DATA["users"], movies=QUICK_DATA["movies"])
        data_dir = data["directory"]
    elif not pathlib.Path(data_dir).is_dir():
        raise SystemExit(f"no data in {data_dir}")
    data_dir = str(pathlib.Path(data_dir).resolve())
    run_args = [f"--hparam={h}" for h in hparams] + passthrough
    print(f"data: {data_dir}; run arguments: {' '.join(run_args) or '(defaults)'}", flush=True)

    warm = None if args.no_warm_up else warm_up(work)
    cold = _pipeline(data_dir, work, run_args, "a-cold", True, args.poll)
    cached = _pipeline(data_dir, work, run_args, "b-cached", False, args.poll)
    print("\n== (c) plain TFRS script (fresh process)", flush=True)
    script = run_script(data_dir, work, run_args, args.poll)
    print(f"   -> {script['wall_s']:.1f} s; {script['train_examples']:,} train / "
          f"{script['eval_examples']:,} eval ratings, {script['epochs']} epochs", flush=True)

    ratios = report(cold, cached, script)
    path = work / "pipeline_cost.json"
    strip = lambda r: {k: v for k, v in r.items() if k not in ("lines", "arrived")}  # noqa
    path.write_text(json.dumps({
        "machine": scale.machine(), "argv": sys.argv, "data_dir": data_dir,
        "run_args": run_args, "quick": args.quick, "warm_up_s": warm,
        "cold": strip(cold), "cached": strip(cached), "script": strip(script),
        **ratios}, indent=1))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

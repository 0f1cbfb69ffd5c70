"""The `movierec` command line: run the pipeline and inspect what it produced."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time

_PROCESS_START = time.time()  # a run's wall time counts the imports too
os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before anything imports TensorFlow
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # hide CUDA-probe noise on CPU hosts

from pipeline.errors import UserError, exit_now  # noqa: E402
from trainer.metrics import HELD_OUT, REPLAY  # noqa: E402  (numpy only)

DEFAULT_DATASET = "ml-100k"
# Modules that add subcommands of their own (each has add_commands(subparsers)).
_COMMAND_MODULES = ("serving.commands",  # serve / recommend / rate
                    "pipeline.kubeflow",  # export-dag
                    "pipeline.report",  # report
                    "components.movielens_example_gen.synth")  # synth


# ----------------------------------------------------------------------------- helpers
def _one_line(exc: BaseException) -> str:
    """The most specific one-line description of a failure, also through Beam's wrapping."""
    from components.movielens_example_gen.movielens import DataError
    from components.validation_gate import AnomaliesFound

    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    for candidate in chain:
        if isinstance(candidate, (DataError, AnomaliesFound)):
            return str(candidate).splitlines()[0].split(" [while running")[0].strip()
    text = f"{type(chain[0]).__name__}: {chain[0]}"
    for candidate in chain:  # Beam may re-raise a DataError as another type, by its text
        for marker in ("DataError: ", "AnomaliesFound: "):
            if marker in str(candidate):
                text = str(candidate).split(marker, 1)[1]
                break
    return text.strip().splitlines()[0].split(" [while running")[0]


class _Progress(logging.Handler):
    """Turns TFX's component log lines into one progress line per component."""

    def __init__(self, out):
        super().__init__(logging.INFO)
        self._out, self._t0, self._started, self._cached = out, time.time(), {}, set()
        self._current = None
        self.components = {}

    def emit(self, record):
        msg, args = record.msg, record.args or ()
        if not isinstance(msg, str) or not args:
            return
        now = time.time()
        if msg.startswith("Component %s is running"):
            self._current = args[0]
            self._started[args[0]] = now
        elif msg.startswith("A cached execution"):
            self._cached.add(self._current)
        elif msg.startswith("Component %s is finished"):
            name = args[0]
            took = now - self._started.get(name, now)
            state = "cached" if name in self._cached else "done"
            self.components[name] = {"state": state, "seconds": round(took, 1)}
            print(f"[{now - self._t0:6.1f}s] {name:<32} {state:>6} {took:6.1f}s",
                  file=self._out, flush=True)


class _MaskPasswords(logging.Filter):
    """Masks the metadata database's password in what reaches the run's log: TFX logs the
    connection config it runs with (`password: "..."`), URIs carry one, and `secrets`
    are masked wherever they appear."""

    def __init__(self, secrets=()):
        super().__init__()
        self._secrets = [s for s in secrets if s and len(s) >= 4]

    def filter(self, record):
        from pipeline.configs import mask_passwords

        text = record.getMessage()
        masked = mask_passwords(text)
        for secret in self._secrets:
            masked = masked.replace(secret, "***")
        if masked != text:
            record.msg, record.args = masked, None
        return True


@contextlib.contextmanager
def _run_logging(log_path: str, progress: _Progress, secrets=()):
    """All library logging goes to `log_path` (any of `secrets` masked); the terminal gets
    progress lines only."""
    from absl import logging as absl_logging

    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    root = logging.getLogger()
    file_handler = logging.FileHandler(log_path)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    file_handler.addFilter(_MaskPasswords(secrets))
    saved = (root.handlers[:], root.level)
    absl_handler = absl_logging.get_absl_handler()
    root.handlers = [file_handler, progress]
    root.setLevel(logging.INFO)
    absl_logging.set_verbosity(absl_logging.INFO)
    logging.getLogger("absl").removeHandler(absl_handler)
    tf_logger = logging.getLogger("tensorflow")  # has a console handler of its own
    tf_saved = (tf_logger.handlers[:], tf_logger.propagate)
    tf_logger.handlers, tf_logger.propagate = [], True
    try:
        yield
    finally:
        root.handlers = saved[0]
        root.setLevel(saved[1])
        absl_logging.set_verbosity(absl_logging.WARNING)
        tf_logger.handlers, tf_logger.propagate = tf_saved
        file_handler.close()


def _resolve_data_dir(args) -> str:
    """--data-dir as given (configs.from_options checks it), else --dataset fetched into
    the cache."""
    from components.movielens_example_gen import movielens

    if args.data_dir:
        return args.data_dir
    print(f"no --data-dir: using {args.dataset} from the cache (downloading it if needed)",
          flush=True)
    return str(movielens.fetch_dataset(args.dataset))


def _print_summary(summary: dict, out):
    def fmt(key):
        value = summary.get(key)
        return "-" if value is None else (f"{value:.4f}" if isinstance(value, float)
                                          else str(value))

    print("summary:", file=out)
    if summary.get("protocol"):
        print(f"  protocol   {summary['protocol']}", file=out)
    print(f"  rating     rmse {fmt('rmse')}  mae {fmt('mae')}  "
          f"examples {fmt('example_count')}", file=out)
    for name, prefix in (("retrieval", ""), ("filtered", "filtered_")):
        if name == "retrieval" or f"{prefix}top_1_accuracy" in summary:
            print(f"  {name:<10} " + "  ".join(
                f"top{k} {fmt(f'{prefix}top_{k}_accuracy')}" for k in (1, 5, 10, 50, 100)),
                file=out)
    print(f"  blessed    {fmt('blessed')}", file=out)
    print(f"  pushed     {summary.get('pushed_model') or 'not pushed'}", file=out, flush=True)


# ---------------------------------------------------------------------------- commands
def cmd_run(args) -> int:
    from components.movielens_example_gen import movielens
    from components.movielens_example_gen.splits import ratings_sources
    from pipeline import configs
    from pipeline.options import from_args as options_from_args

    options = {**options_from_args(args), "output_dir": args.output_dir}
    if not args.data_dir:  # bad options fail before a download
        configs.from_options({**options, "data_dir": args.dataset})
    data_dir = _resolve_data_dir(args)
    config = configs.from_options({**options, "data_dir": data_dir,
                                   "output_dir": args.output_dir}, local_data=True)
    output_dir = config.output_dir
    # Bad input fails here with one line and exit 2, before TFX starts or OUT is touched
    # (the whole files are checked again as ExampleGen streams them).
    movielens.preflight(config.data_dir, config.layout,
                        [name for name, _ in ratings_sources(config.split)])
    source, scope = config.metadata_source, config.metadata_scope
    from pipeline import metadata, output_lock

    if config.shared_metadata:  # an unreachable server fails before OUT is touched
        metadata.connect(source, scope)
    with output_lock.held(output_dir):
        from pipeline import local_runner

        log_path = os.path.join(output_dir, "logs",
                                time.strftime("run-%Y%m%d-%H%M%S.log"))
        print(f"movierec: {config.layout} from {config.data_dir} -> {output_dir} "
              f"(full log: {log_path})", flush=True)
        if config.shared_metadata:
            print(f"metadata: {metadata.describe(source)}, pipeline {config.pipeline_name}",
                  flush=True)
        # only this output directory's executions: another's run may share the database
        closed = metadata.close_interrupted(source, scope)
        if closed:
            print(f"an earlier run was interrupted: {closed} unfinished execution(s) marked "
                  f"canceled in ML Metadata", flush=True)
        progress = _Progress(sys.stdout)
        started = time.time()
        args.runs_before = metadata.run_count(source, scope)
        secrets = [metadata.connection_config(source).mysql.password]
        with _run_logging(log_path, progress, secrets):
            try:
                local_runner.run(config)
            except Exception as e:
                logging.getLogger("movierec").exception("run failed")
                raise UserError(_one_line(e) + f" (full log: {log_path})") from e
            finally:
                _annotate(config, args)
        store = metadata.connect(source, scope)
        summary = metadata.run_metrics(store, metadata.find_run(store))
        print(f"finished in {time.time() - started:.0f} s", flush=True)
        _print_summary(summary, sys.stdout)
        if config.tune_trials:
            print("tuned hyperparameters: " + json.dumps(
                metadata.best_hyperparameters(store), sort_keys=True))
    return 0


def _table(rows: list, columns: list, out=None) -> None:
    """Rows of dicts as an aligned text table (columns: (header, key or function))."""
    out = out or sys.stdout
    cells = [[h for h, _ in columns]]
    for row in rows:
        cells.append([str(k(row) if callable(k) else
                          ("-" if row.get(k) is None else row.get(k))) for _, k in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), file=out)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _inspect_runs(store, args):
    from pipeline import metadata

    index = metadata._Index(store)
    summaries = [metadata.run_summary(store, c, index) for c in metadata.runs(store)]
    if args.json:
        return summaries
    for s in summaries:
        print(f"run {s['run_id']}  {s['state']}  {s['start']} -> {s['end']}  "
              f"wall {s['wall_seconds']} s  ({s['executed']} executed, {s['cached']} cached)")
        _table(s["components"], [("  component", lambda c: "  " + str(c["component"])),
                                 ("state", "state"), ("seconds", "seconds")])
    return None


def _inspect_artifacts(store, args):
    from pipeline import metadata

    rows = metadata.artifacts(store, args.run, args.type)
    if args.json:
        return rows
    _table(rows, [("id", "id"), ("type", "type"), ("producer", "producer"),
                  ("created", "created"), ("uri", "uri"),
                  ("properties", lambda r: ", ".join(
                      f"{k}={str(v)[:40]}" for k, v in sorted(r["properties"].items())
                      if k not in ("tfx_version", "is_external", "state")))])
    return None


def _inspect_lineage(store, args):
    from pipeline import metadata

    if args.pushed:
        if args.pushed != "latest":
            raise UserError("--pushed takes 'latest'")
        artifact = metadata.latest_pushed(store)
        if artifact is None:
            raise UserError("no model has been pushed yet")
        artifact_id = artifact.id
    elif args.artifact:
        if not args.artifact.isdigit():
            raise UserError(f"ARTIFACT is an artifact id (see `movierec inspect artifacts`), "
                            f"got {args.artifact!r}")
        artifact_id = int(args.artifact)
    else:
        raise UserError("give an artifact id or --pushed latest")
    rows = metadata.lineage(store, artifact_id)
    source = metadata.lineage_input(rows)
    if args.json:
        return {"artifact_id": artifact_id, "lineage": rows, "input": source}
    for row in rows:
        pad = "  " * row["depth"]
        key = f"{row['input_key']}: " if row.get("input_key") else ""
        props = row["properties"]
        extra = ", ".join(f"{k}={props[k]}" for k in (
            "pushed_destination", "blessed", "reason", "top_100_accuracy", "layout",
            "input_fingerprint") if k in props)
        print(f"{pad}{key}{row['type']} #{row['id']} <- {row['producer'] or '(imported)'}"
              f"{' (see above)' if row.get('repeat') else ''}  {row['uri']}"
              + (f"  [{extra}]" if extra and not row.get("repeat") else ""))
    if source:
        print(f"input data: {source['input_dir']} (layout {source['layout']}, "
              f"fingerprint {source['input_fingerprint']})")
    return None


def _inspect_metrics(store, args):
    from pipeline import metadata

    result = metadata.run_metrics(store, metadata.find_run(store, args.run, evaluated=True))
    if args.json:
        return result
    _print_summary(result, sys.stdout)
    return None


def _inspect_diff(store, args):
    from pipeline import metadata

    if len(args.runs) != 2:
        raise UserError("diff takes two run ids: movierec inspect diff RUN_A RUN_B")
    result = metadata.diff(store, *args.runs)
    if args.json:
        return result
    rows = [{"metric": k, **v} for k, v in result["metrics"].items() if k != "run_id"]
    _table(rows, [("metric", "metric"), (result["run_a"], lambda r: _fmt(r["a"])),
                  (result["run_b"], lambda r: _fmt(r["b"])),
                  ("delta", lambda r: "" if "delta" not in r else f"{r['delta']:+.4f}")])
    return None


_INSPECT = {"runs": _inspect_runs, "artifacts": _inspect_artifacts,
            "lineage": _inspect_lineage, "metrics": _inspect_metrics, "diff": _inspect_diff}


def _annotate(config, args) -> None:
    """Records the command's wall time and Beam args of the run just made in ML Metadata."""
    from pipeline import metadata
    from pipeline.configs import mask_passwords
    from pipeline.pipeline import BEAM_COMPONENTS

    if not metadata.exists(config.metadata_source):
        return
    try:
        metadata.annotate_run(
            config.metadata_source,
            {"wall_seconds": round(time.time() - args.started, 1),
             "beam_pipeline_args": json.dumps(config.all_beam_args()),
             "command": mask_passwords(" ".join(["movierec", *args.argv]))},
            beam_components=BEAM_COMPONENTS, beam_args=config.all_beam_args(),
            runs_before=args.runs_before, pipeline_name=config.metadata_scope)
    except Exception:
        logging.getLogger("movierec").exception("could not annotate the run in ML Metadata")


def cmd_inspect(args) -> int:
    from pipeline import metadata

    if args.what != "diff" and args.runs:
        if args.what == "lineage" and len(args.runs) == 1:
            args.artifact = args.runs[0]
        else:
            raise UserError(f"inspect {args.what} takes no positional arguments "
                            f"besides its own: {' '.join(args.runs)}")
    from pipeline import options

    store = metadata.connect_reader(*options.metadata_target(args))
    result = _INSPECT[args.what](store, args)
    if result is not None:
        print(json.dumps(result, sort_keys=True, default=str))
    return 0


def _example_batches(data_dir: str, file_name: str | None, size: int = 2048):
    """Batches of serialized, joined rating examples of a MovieLens ratings file."""
    import itertools

    import tensorflow as tf

    from components.movielens_example_gen.executor import rating_examples

    examples = rating_examples(data_dir, None, file_name)
    while chunk := list(itertools.islice(examples, size)):
        yield tf.constant(chunk)


def cmd_evaluate(args) -> int:
    """Metrics of a pushed model on ratings from outside the pipeline."""
    from serving import versions
    from trainer import evaluation, saved_model

    model_dir = versions.resolve(args.model)
    model = saved_model.load(model_dir)
    if args.protocol == REPLAY:
        # the requests know the earlier ratings of --train-ratings-file and of the replay
        metrics = evaluation.evaluate_replay(
            model, _example_batches(args.data_dir, args.train_ratings_file)
            if args.train_ratings_file else [],
            _example_batches(args.data_dir, args.ratings_file))
    else:
        train_rated = (evaluation.rated_movies(_example_batches(args.data_dir,
                                                                args.train_ratings_file))
                       if args.train_ratings_file else None)
        metrics = evaluation.evaluate(model, _example_batches(args.data_dir,
                                                              args.ratings_file),
                                      train_rated=train_rated)
    metrics["model"] = model_dir
    if args.json:
        print(json.dumps(metrics, sort_keys=True))
    else:
        _print_summary({**metrics, "example_count": metrics["rating_examples"]}, sys.stdout)
    return 0


def cmd_catalog_add(args) -> int:
    """New movies in the served model without retraining (serving/catalog.py): the movie
    file read by the pipeline's reader, the movies added as a new version."""
    from components.movielens_example_gen import movielens
    from serving import catalog

    movies = movielens.read_movie_file(args.movies, args.layout)  # DataError: one line
    result = catalog.add(args.model_base, movies, model_name=args.model_name)
    added = result["added"]
    print(f"added {len(added)} {'movie' if len(added) == 1 else 'movies'} "
          f"({catalog.named(added)}) to version {result['from_version']}: version "
          f"{result['version']} ({result['catalog_size']} movies) at {result['path']}")
    return 0


def _add_run_arguments(run) -> None:
    from pipeline import options

    run.add_argument("--data-dir", help="a MovieLens directory (ml-100k, ml-1m or "
                     "ml-latest/ml-25m layout); default: download --dataset into the cache")
    run.add_argument("--dataset", default=DEFAULT_DATASET,
                     help="GroupLens dataset to fetch when --data-dir is not given "
                     "(cache: $MOVIEREC_CACHE or ~/.cache/movierec)")
    run.add_argument("--output-dir", default="output",
                     help="a local directory: the run's lock, logs, metadata.sqlite, and "
                     "by default the pipeline root (pipeline/) and serving/")
    run.add_argument("--pipeline-root", metavar="PATH_OR_URI",
                     help="where the components write their artifacts (default "
                     "OUTPUT_DIR/pipeline); gs://BUCKET/... or s3://BUCKET/... for an "
                     "object store")
    run.add_argument("--serving-dir", metavar="PATH_OR_URI",
                     help="where the Pusher writes blessed models, one numbered version "
                     "each (default OUTPUT_DIR/serving/movierec); may be gs:// or s3://")
    options.add_setting_arguments(run)
    options.add_metadata_arguments(run)
    run.add_argument("--beam-workers", type=int, default=0,
                     help="Beam multi-processing workers (default: in-process)")
    run.add_argument("--warm-start", action="store_true",
                     help="initialize the model from the latest blessed model (embeddings "
                     "mapped through the vocabularies, so new data is fine)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="movierec", description="Train, evaluate and ship a TFRS movie recommender "
        "with a TFX pipeline.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pipeline (ExampleGen ... Pusher)")
    _add_run_arguments(run)
    run.set_defaults(func=cmd_run)

    tune = sub.add_parser(
        "tune", help="run the pipeline with a Tuner (keras-tuner random search over "
        "trainer/tuning.py's SEARCH_SPACE on a validation split of train) feeding the Trainer")
    _add_run_arguments(tune)
    tune.add_argument("--trials", type=int, default=4, help="models tried (default 4)")
    tune.set_defaults(func=cmd_run)


    inspect = sub.add_parser(
        "inspect", help="runs, artifacts, lineage and metrics from ML Metadata",
        description="runs: every pipeline run, each component executed or cached; "
        "artifacts [--run ID] [--type T]; lineage ARTIFACT_ID | --pushed latest: from a "
        "model back to the input data; metrics [--run ID]; diff RUN_A RUN_B.")
    inspect.add_argument("what", choices=tuple(_INSPECT))
    inspect.add_argument("runs", nargs="*", metavar="ID",
                         help="diff: two run ids; lineage: an artifact id")
    inspect.add_argument("--output-dir", default="output")
    from pipeline import options

    options.add_metadata_arguments(inspect, reader=True)
    inspect.add_argument("--run", help="run id (metrics: default the latest run that "
                         "reached evaluation; artifacts: only that run's)")
    inspect.add_argument("--type", help="artifacts: only this type (e.g. Model, Examples)")
    inspect.add_argument("--pushed", metavar="latest",
                         help="lineage: of the latest pushed model")
    inspect.add_argument("--json", action="store_true", help="JSON for scripts")
    inspect.set_defaults(artifact=None)
    inspect.set_defaults(func=cmd_inspect)
    evaluate = sub.add_parser(
        "evaluate", help="metrics of a pushed model on ratings from outside the pipeline")
    evaluate.add_argument("--model", required=True,
                          help="a SavedModel dir, or a serving base (newest version)")
    evaluate.add_argument("--data-dir", required=True, help="a MovieLens directory")
    evaluate.add_argument("--ratings-file",
                          help="a ratings file of that directory (default: the layout's), "
                          "e.g. u1.test")
    evaluate.add_argument("--train-ratings-file",
                          help="the ratings the model was trained on (e.g. u1.base): adds the "
                          "filtered metrics (those movies removed from each user's ranking); "
                          "with --protocol replay, the requests' earlier history")
    evaluate.add_argument("--protocol", choices=(HELD_OUT, REPLAY), default=HELD_OUT,
                          help=f"{HELD_OUT}: each rating ranked for its user at its time "
                          f"(default); {REPLAY}: the ratings replayed in time order, each a "
                          "request knowing its user's earlier ratings (filtered: those "
                          "removed), as the pipeline measures a time split")
    evaluate.add_argument("--json", action="store_true", help="one JSON object")
    evaluate.set_defaults(func=cmd_evaluate)
    catalog = sub.add_parser("catalog", help="change the served model's catalog",
                             description="Changes the catalog of the newest version under "
                             "a serving base, as a new version, without retraining.")
    catalog_sub = catalog.add_subparsers(dest="catalog_command", required=True)
    add = catalog_sub.add_parser(
        "add", help="new movies, embedded from their features, as a new version",
        description="Adds the movies of a MovieLens movie file (u.item, movies.dat or "
        "movies.csv) to the catalog of the newest version under MODEL_BASE/MODEL_NAME and "
        "writes the result as a new version (the newest + 1): each movie is embedded from "
        "its title, genres and year through the model's candidate tower, the existing "
        "movies keep their embeddings, and `movierec serve` picks the version up. A movie "
        "id already in the catalog is an error; nothing is written then.")
    add.add_argument("--model-base", default="output/serving",
                     help="the serving base: versions are MODEL_BASE/MODEL_NAME/<int>/ "
                     "(default: output/serving; a local directory)")
    add.add_argument("--movies", required=True, metavar="FILE",
                     help="the new movies, in a MovieLens movie file's format")
    add.add_argument("--layout", choices=("ml-100k", "ml-1m", "ml-latest"),
                     help="the file's layout (default: told by its name: u.item, "
                     "movies.dat, movies.csv)")
    add.add_argument("--model-name", default="movierec")
    add.set_defaults(func=cmd_catalog_add)

    import importlib

    for module in _COMMAND_MODULES:
        importlib.import_module(module).add_commands(sub)
    return parser


def main(argv=None, started: float | None = None) -> int:
    """The CLI; `started`: when the command began (the console script passes the process
    start, so that a run's recorded wall time includes the imports)."""
    started = started or time.time()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "inspect" and not any(e.startswith("-") for e in extra):
        args.runs += extra  # ids given after options: inspect diff --output-dir OUT A B
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.argv, args.started = argv, started
    from components.movielens_example_gen.movielens import DataError
    from pipeline.metadata import MetadataError

    try:
        return args.func(args)
    except (UserError, DataError, MetadataError) as e:
        from pipeline.configs import mask_passwords

        print(f"movierec: error: {mask_passwords(str(e).splitlines()[0])}", file=sys.stderr)
        return 2 if not isinstance(e, UserError) or "full log" not in str(e) else 1
    except KeyboardInterrupt:
        print("movierec: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The console script: main(), then exit at once (pipeline.errors.exit_now)."""
    try:
        rc = main(started=_PROCESS_START)
    except BrokenPipeError:  # `movierec inspect runs | head`: the reader has gone
        rc = 0
    exit_now(rc)


if __name__ == "__main__":
    entry()

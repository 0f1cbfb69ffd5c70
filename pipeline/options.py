"""The pipeline settings as command-line options, shared by `movierec run` / `tune`
(pipeline/cli.py) and `movierec export-dag kubeflow` (pipeline/kubeflow.py).

`add_setting_arguments(parser)` declares them once; `from_args(args)` hands them, by
configs.from_options' names, to that one function, which checks them.
`add_metadata_arguments(parser)` declares where ML Metadata is (`--metadata-uri`,
`--pipeline-name`) for `run` / `tune`, `inspect` and `report`; `metadata_target(args)`
is what a reader (`inspect`, `report`) connects to.
"""

from __future__ import annotations

from pipeline import configs


def add_setting_arguments(parser, cache_help: str = "re-execute every component instead "
                          "of reusing cached results") -> None:
    """--split, --seed, the hyperparameters, the blessing bound, Beam args, --no-cache."""
    from components.movielens_example_gen import splits

    parser.add_argument("--split", default=splits.DEFAULT, help=splits.HELP)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=int,
                        help="full passes over the training ratings (default 6), capped by "
                        "the example budget for large data (--hparam example_budget=0 "
                        "lifts it)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--embedding-dim", type=int)
    parser.add_argument("--optimizer", choices=("adam", "adagrad", "sgd"))
    parser.add_argument("--index", choices=("brute_force", "scann"),
                        help="retrieval index of the exported model (default brute_force; "
                        "scann for large catalogs)")
    parser.add_argument("--hparam", action="append", metavar="KEY=VALUE",
                        help="any trainer.model.HParams field, e.g. rating_weight=0.5")
    parser.add_argument("--timestamp-buckets", type=int,
                        help="Transform's quantile buckets of the ratings' times "
                        "(default 1000)")
    parser.add_argument("--rmse-upper-bound", type=float,
                        help="blessing needs eval RMSE at most this")
    parser.add_argument("--beam-pipeline-args", default="",
                        help="extra Beam pipeline args of the Beam components, "
                        "space-separated")
    parser.add_argument("--no-cache", action="store_true", help=cache_help)


def from_args(args) -> dict:
    """configs.from_options' mapping of the settings in `args`: --hparam KEY=VALUE items,
    then the shortcut flags (--epochs, ...) over them, then the other settings (a flag a
    command does not have is left out)."""
    hparams = configs.parse_hparam_items(args.hparam)
    for key in configs.HPARAM_SHORTCUTS:
        if getattr(args, key, None) is not None:
            hparams[key] = getattr(args, key)
    options = {"hparams": hparams, "split": args.split, "seed": args.seed,
               "rmse_upper_bound": args.rmse_upper_bound,
               "timestamp_buckets": args.timestamp_buckets,
               "beam_pipeline_args": args.beam_pipeline_args,
               "enable_cache": not args.no_cache,
               "tune_trials": getattr(args, "trials", None)}
    for key in ("beam_workers", "warm_start", "metadata_uri", "pipeline_name"):
        if hasattr(args, key):
            options[key] = getattr(args, key)
    for key in ("pipeline_root", "serving_dir"):
        if getattr(args, key, None):
            options[f"{key}_override"] = getattr(args, key)
    return options


def add_metadata_arguments(parser, reader: bool = False) -> None:
    """--metadata-uri and --pipeline-name (`reader`: also --metadata PATH, a SQLite file)."""
    parser.add_argument("--metadata-uri", metavar="mysql://USER[:PASS]@HOST[:PORT]/DB",
                        help="ML Metadata on a MySQL / MariaDB server (the database must "
                        "exist; default: SQLite in the output directory). A password left "
                        "out of the URI is read from $MOVIEREC_METADATA_PASSWORD")
    parser.add_argument("--pipeline-name",
                        help="the pipeline's name in ML Metadata (default movierec; with "
                        "--metadata-uri one per output directory: movierec-<its name>-<a "
                        "digest of its path>)")
    if reader:
        parser.add_argument("--metadata", help="path of a metadata.sqlite (overrides "
                            "--output-dir)")


def metadata_target(args) -> tuple[str, str | None]:
    """(source, pipeline or None) that `inspect` / `report` read: --metadata, else
    --metadata-uri (scoped to --pipeline-name or the output directory's pipeline), else
    OUT/metadata.sqlite; UserError (one line) on a bad URI or both --metadata options."""
    from pipeline.errors import UserError

    if args.metadata and args.metadata_uri:
        raise UserError("give --metadata (a SQLite file) or --metadata-uri (a server), "
                        "not both")
    if args.metadata:
        return args.metadata, configs.metadata_target(args.output_dir, None,
                                                      args.pipeline_name)[1]
    return configs.metadata_target(args.output_dir, args.metadata_uri, args.pipeline_name)

"""`movierec export-dag kubeflow` (wired into pipeline/cli.py): compiles the pipeline of
`create_pipeline(config)` with TFX's Kubeflow V2 runner into a pipeline spec for Vertex AI
Pipelines or a Kubeflow Pipelines 2.x endpoint.

Every task runs in one container image (the Dockerfile's), which holds the repository at
IMAGE_PACKAGE_ROOT. Paths in the spec are as the cluster sees them: the data directory,
the pipeline root, the serving directory, and the schema files inside the image.
"""

from __future__ import annotations

import json
import os
import posixpath
import re

# Where the Dockerfile puts the repository (its WORKDIR); the package is installed from
# there (editable), so pipeline/schemas/*.pbtxt are files under it inside the image.
IMAGE_PACKAGE_ROOT = "/opt/movierec"
# The MovieLens directory the image ships (the Dockerfile's MOVIELENS_DATASET build arg).
DEFAULT_DATA_DIR = f"{IMAGE_PACKAGE_ROOT}/data/ml-100k"
FORMATS = (".json", ".yaml", ".yml")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def default_image() -> str:
    """movierec:<version of the installed package>, the tag the README builds."""
    from importlib import metadata

    try:
        return f"movierec:{metadata.version('movierec')}"
    except metadata.PackageNotFoundError:
        return "movierec:latest"


def add_commands(sub) -> None:
    """Adds `export-dag kubeflow` to the `movierec` argument parser."""
    export = sub.add_parser(
        "export-dag", help="compile the pipeline for an orchestrator (kubeflow)",
        description="Compiles the pipeline of `movierec run` for another orchestrator.")
    targets = export.add_subparsers(dest="target", required=True, metavar="TARGET")
    kubeflow = targets.add_parser(
        "kubeflow", help="a Kubeflow V2 pipeline spec (Vertex AI Pipelines, KFP 2.x)",
        description="Compiles the pipeline with TFX's KubeflowV2DagRunner. FILE.json is a "
        "PipelineJob (Vertex AI Pipelines: aiplatform.PipelineJob(template_path=FILE)); "
        "FILE.yaml is a PipelineSpec (kfp.Client().create_run_from_pipeline_package). "
        "Paths are as the cluster's containers see them.")
    kubeflow.add_argument("--output", required=True, metavar="FILE",
                          help="the spec to write: .json (PipelineJob) or .yaml (PipelineSpec)")
    kubeflow.add_argument("--image", default=default_image(),
                          help="container image of every task, as the cluster pulls it "
                          f"(default {default_image()}, what the Dockerfile builds)")
    kubeflow.add_argument("--pipeline-root", metavar="URI",
                          help="where the tasks write artifacts, e.g. gs://BUCKET/movierec "
                          "(required)")
    kubeflow.add_argument("--serving-dir", metavar="URI",
                          help="where the Pusher writes versions (<dir>/<version>/); default "
                          "PIPELINE_ROOT/serving/movierec")
    kubeflow.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                          help="absolute path of a MovieLens directory inside the task "
                          "containers: a volume, a Cloud Storage FUSE path (/gcs/BUCKET/...) "
                          f"or the copy in the image (default {DEFAULT_DATA_DIR})")
    kubeflow.add_argument("--layout",
                          help="ml-100k, ml-1m or ml-latest (or a dataset name: ml-25m, ...); "
                          "default: detected when --data-dir is a local directory, else taken "
                          "from its name (.../ml-100k)")
    kubeflow.add_argument("--split", default="random",
                          help="random (default), time or fold:NAME, as for `movierec run`")
    kubeflow.add_argument("--seed", type=int, default=42)
    kubeflow.add_argument("--hparam", action="append", metavar="KEY=VALUE",
                          help="any trainer.model.HParams field, e.g. epochs=3")
    kubeflow.add_argument("--trials", type=int, default=0,
                          help="> 0: a Tuner with this many trials feeds the Trainer (as "
                          "`movierec tune`)")
    kubeflow.add_argument("--rmse-upper-bound", type=float,
                          help="blessing needs eval RMSE at most this")
    kubeflow.add_argument("--beam-pipeline-args", default="",
                          help="Beam pipeline args of the Beam components, space-separated "
                          "(default: Beam's DirectRunner inside each task's container)")
    kubeflow.add_argument("--no-cache", action="store_true",
                          help="compile with caching off for every task")
    kubeflow.set_defaults(func=cmd_export_kubeflow)


# ------------------------------------------------------------------------------- config
def _layout(data_dir: str, layout: str | None) -> tuple[str, bool]:
    """(layout, whether data_dir is a local directory) of --data-dir / --layout."""
    from components.movielens_example_gen import movielens
    from pipeline.cli import UserError

    def named(name, what):
        try:
            return movielens._layout(name, data_dir)
        except movielens.DataError as e:
            raise UserError(f"{what}: {e}") from e

    given = named(layout, "--layout") if layout else None
    if os.path.isdir(data_dir):
        try:
            detected = movielens.detect_layout(data_dir)
        except movielens.DataError as e:
            raise UserError(str(e)) from e
        if given and given != detected:
            raise UserError(f"--layout {layout} does not match the files in {data_dir} "
                            f"({detected})")
        return detected, True
    if given:
        return given, False
    name = posixpath.basename(data_dir.rstrip("/"))
    if name in movielens.DATASETS or name in movielens.LAYOUTS:
        return named(name, "--data-dir"), False
    raise UserError(f"--layout is required: --data-dir {data_dir} is not a local directory "
                    f"and its name is not a MovieLens dataset's")


def pipeline_config(args):
    """The configs.PipelineConfig of the args, with the cluster's paths."""
    from components.movielens_example_gen.executor import ratings_sources
    from pipeline import configs
    from pipeline.cli import UserError, _hparams

    data_dir = args.data_dir.rstrip("/") or "/"
    if _URL.match(data_dir):
        hint = (f"; on Vertex AI use its Cloud Storage FUSE path /gcs/{data_dir[5:]}"
                if data_dir.startswith("gs://") else "")
        raise UserError(f"--data-dir {data_dir}: MovieLensExampleGen reads a file system "
                        f"path, not a URL{hint}")
    if not posixpath.isabs(data_dir):
        raise UserError(f"--data-dir must be an absolute path as the task containers see "
                        f"it, not {data_dir!r}")
    if not args.pipeline_root:
        raise UserError("--pipeline-root is required: where the tasks write artifacts, "
                        "e.g. gs://BUCKET/movierec")
    root = args.pipeline_root.rstrip("/")
    serving = (args.serving_dir or posixpath.join(root, "serving", configs.MODEL_NAME))
    if not args.image.strip() or any(c.isspace() for c in args.image):
        raise UserError(f"--image {args.image!r} is not an image reference")
    if args.trials < 0:
        raise UserError("--trials must be 0 or more")
    try:
        ratings_sources(args.split)
    except ValueError as e:
        raise UserError(str(e)) from e
    hparams = _hparams(args)
    layout, local = _layout(data_dir, args.layout)
    options = {"rmse_upper_bound": args.rmse_upper_bound} if args.rmse_upper_bound else {}
    # output_dir only places metadata.sqlite, which the Kubeflow V2 runner ignores (Vertex
    # and KFP keep ML Metadata themselves), though create_pipeline makes its directory:
    # the directory of the spec, which exists.
    return configs.PipelineConfig(
        data_dir=data_dir, output_dir=os.path.dirname(os.path.abspath(args.output)),
        layout=layout, split=args.split, seed=args.seed,
        hparams=hparams, tune_trials=args.trials, enable_cache=not args.no_cache,
        beam_pipeline_args=tuple(args.beam_pipeline_args.split()),
        # KubeflowV2DagRunner compiles no resolver strategy but TFX's own
        # LatestBlessedModelStrategy (and LatestArtifactStrategy).
        baseline_excludes_candidate=False,
        pipeline_root_override=root, serving_dir_override=serving.rstrip("/"),
        package_root=IMAGE_PACKAGE_ROOT,
        # A local directory is fingerprinted as `movierec run` does; a cluster-only one
        # gets an empty fingerprint (caching then cannot tell changed files: --no-cache).
        input_fingerprint=None if local else "", **options)


def compile_spec(config, image: str) -> dict:
    """The PipelineJob dict of create_pipeline(config), compiled by KubeflowV2DagRunner
    with every task in `image`."""
    from tfx import v1 as tfx

    from pipeline.pipeline import create_pipeline

    dag = create_pipeline(config)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=image, display_name=config.pipeline_name))
    job = runner.run(dag, write_out=False)
    # KFP reads the pipeline root from the spec when a run names none (the runner puts it
    # only in the PipelineJob's runtimeConfig, which a .yaml spec does not have).
    job["pipelineSpec"]["defaultPipelineRoot"] = config.pipeline_root
    return job


def write_spec(job: dict, path: str) -> None:
    """FILE.json: the PipelineJob; FILE.yaml / .yml: its PipelineSpec alone."""
    if path.endswith(".json"):
        text = json.dumps(job, indent=2, sort_keys=True) + "\n"
    else:
        import yaml

        text = yaml.safe_dump(job["pipelineSpec"], sort_keys=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def cmd_export_kubeflow(args) -> int:
    from pipeline.cli import UserError

    output = os.path.abspath(args.output)
    if not output.endswith(FORMATS):
        raise UserError(f"--output must end with {', '.join(FORMATS)}: {args.output}")
    if os.path.isdir(output):
        raise UserError(f"--output {args.output} is a directory")
    try:
        os.makedirs(os.path.dirname(output), exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write {args.output}: {e.strerror}") from e
    config = pipeline_config(args)
    job = compile_spec(config, args.image)
    try:
        write_spec(job, output)
    except OSError as e:
        raise UserError(f"cannot write {args.output}: {e.strerror}") from e
    tasks = job["pipelineSpec"]["root"]["dag"]["tasks"]
    print(f"movierec: wrote {output}: {len(tasks)} tasks in {args.image}, "
          f"data {config.data_dir} ({config.layout}), pipeline root "
          f"{config.pipeline_root}, serving {config.serving_dir}")
    return 0

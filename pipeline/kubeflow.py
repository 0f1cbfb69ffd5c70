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
    from pipeline import options

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
                          help="a MovieLens directory as the task containers see it: "
                          "gs://BUCKET/... (or s3://), an absolute path of a volume or of "
                          f"the copy in the image (default {DEFAULT_DATA_DIR})")
    kubeflow.add_argument("--layout",
                          help="ml-100k, ml-1m or ml-latest (or a dataset name: ml-25m, ...); "
                          "default: detected when --data-dir is a local directory, else taken "
                          "from its name (.../ml-100k)")
    options.add_setting_arguments(kubeflow, cache_help="compile with caching off for every "
                                  "task")
    kubeflow.add_argument("--trials", type=int, default=0,
                          help="> 0: a Tuner with this many trials feeds the Trainer (as "
                          "`movierec tune`)")
    kubeflow.set_defaults(func=cmd_export_kubeflow)


# ------------------------------------------------------------------------------- config
def pipeline_config(args):
    """The configs.PipelineConfig of the args, with the cluster's paths (the settings
    themselves are checked by configs.from_options, as for `movierec run`)."""
    from pipeline import configs
    from pipeline.options import from_args
    from pipeline.errors import UserError

    data_dir = args.data_dir.rstrip("/") or "/"
    if _URL.match(data_dir) and not data_dir.startswith(("gs://", "s3://")):
        raise UserError(f"--data-dir {data_dir}: MovieLensExampleGen reads a file system "
                        f"path or a gs:// / s3:// URI, not a URL")
    if not _URL.match(data_dir) and not posixpath.isabs(data_dir):
        raise UserError(f"--data-dir must be an absolute path as the task containers see "
                        f"it, or a gs:// / s3:// URI, not {data_dir!r}")
    if not args.pipeline_root:
        raise UserError("--pipeline-root is required: where the tasks write artifacts, "
                        "e.g. gs://BUCKET/movierec")
    root = args.pipeline_root.rstrip("/")
    serving = (args.serving_dir or posixpath.join(root, "serving", configs.MODEL_NAME))
    if not args.image.strip() or any(c.isspace() for c in args.image):
        raise UserError(f"--image {args.image!r} is not an image reference")
    local = os.path.isdir(data_dir)
    # output_dir only places metadata.sqlite, which the Kubeflow V2 runner ignores (Vertex
    # and KFP keep ML Metadata themselves), though create_pipeline makes its directory:
    # the directory of the spec, which exists.
    return configs.from_options({
        **from_args(args), "data_dir": data_dir, "layout": args.layout or "",
        "output_dir": os.path.dirname(os.path.abspath(args.output)),
        # KubeflowV2DagRunner compiles no resolver strategy but TFX's own
        # LatestBlessedModelStrategy (and LatestArtifactStrategy).
        "baseline_excludes_candidate": False,
        "pipeline_root_override": root, "serving_dir_override": serving.rstrip("/"),
        "package_root": IMAGE_PACKAGE_ROOT,
        # A local directory is fingerprinted as `movierec run` does; a cluster-only one
        # gets an empty fingerprint (caching then cannot tell changed files: --no-cache).
        "input_fingerprint": None if local else ""})


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
    from pipeline.errors import UserError

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

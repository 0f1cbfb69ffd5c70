"""One dataclass of pipeline settings: paths, hyperparameters, thresholds, defaults."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
from typing import Mapping, Sequence

PIPELINE_NAME = "movierec"
MODEL_NAME = "movierec"
SCHEMA_DIR = pathlib.Path(__file__).parent / "schemas"
_REPO_PACKAGES = pathlib.Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class PipelineConfig:
    data_dir: str
    output_dir: str
    layout: str = ""  # detected from data_dir when empty
    split: str = "random"
    seed: int = 42
    eval_fraction: float = 0.2
    # Trainer hyperparameters overriding trainer.model.HParams' defaults.
    hparams: Mapping = dataclasses.field(default_factory=dict)
    # Blessing: RMSE must stay under this bound and must not get worse than the latest
    # blessed model's by more than rmse_tolerance.
    rmse_upper_bound: float = 1.07
    rmse_tolerance: float = 0.01
    # ... and the retrieval metric must not fall more than retrieval_tolerance under the
    # latest blessed model's (nor under retrieval_floor).
    retrieval_metric: str = "top_100_accuracy"
    retrieval_tolerance: float = 0.01
    retrieval_floor: float = 0.0
    retrieval_max_examples: int = 200_000
    # > 0: a Tuner (keras-tuner random search, trials) feeds the Trainer's hyperparameters.
    tune_trials: int = 0
    beam_workers: int = 0  # 0: Beam's default (in-process); N > 1: multi-processing
    beam_pipeline_args: Sequence[str] = ()
    enable_cache: bool = True
    # The evaluators' baseline: the latest blessed model other than this run's candidate
    # (False: TFX's LatestBlessedModelStrategy, which Kubeflow V2 requires).
    baseline_excludes_candidate: bool = True
    # Initialize the Trainer from the latest blessed model (trainer/warm_start.py).
    warm_start: bool = False
    # Paths as another machine sees them (Kubeflow: gs://..., the image's package root);
    # empty: derived from output_dir and this checkout.
    pipeline_root_override: str = ""
    serving_dir_override: str = ""
    package_root: str = ""
    # The input data's fingerprint (cache key of ExampleGen); None: computed from data_dir.
    input_fingerprint: str | None = None
    pipeline_name: str = PIPELINE_NAME

    @property
    def pipeline_root(self) -> str:
        return self.pipeline_root_override or os.path.join(self.output_dir, "pipeline")

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.output_dir, "metadata.sqlite")

    @property
    def serving_dir(self) -> str:
        return self.serving_dir_override or os.path.join(self.output_dir, "serving",
                                                         MODEL_NAME)

    @property
    def schema_file(self) -> str:
        relative = (SCHEMA_DIR / f"{self.layout}.pbtxt").relative_to(_REPO_PACKAGES)
        return str(pathlib.PurePosixPath(self.package_root) / relative.as_posix()
                   if self.package_root else _REPO_PACKAGES / relative)

    def all_beam_args(self) -> list[str]:
        args = list(self.beam_pipeline_args)
        if self.beam_workers and self.beam_workers > 1:
            args += ["--direct_running_mode=multi_processing",
                     f"--direct_num_workers={self.beam_workers}"]
        return args


def code_fingerprint(*modules: str) -> str:
    """Digest of the source files of `modules` ('trainer/model.py', ...), relative to the
    repository's package root. Passed in components' custom_config so that changing the
    code they run invalidates their cached executions, and nothing else does."""
    digest = hashlib.sha256()
    for module in sorted(modules):
        path = _REPO_PACKAGES / module
        digest.update(module.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


TRANSFORM_CODE = ("trainer/features.py", "trainer/preprocessing.py")
TRAINER_CODE = TRANSFORM_CODE + ("trainer/model.py", "trainer/run.py", "trainer/export.py",
                                  "trainer/warm_start.py", "trainer/neighborhood.py")
TUNER_CODE = TRAINER_CODE + ("trainer/tuning.py",)

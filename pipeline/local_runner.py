"""Runs the pipeline locally with TFX's LocalDagRunner (Beam DirectRunner, SQLite MLMD)."""

from __future__ import annotations

from tfx.orchestration.local.local_dag_runner import LocalDagRunner

from pipeline import configs
from pipeline.pipeline import create_pipeline


def run(config: configs.PipelineConfig) -> None:
    LocalDagRunner().run(create_pipeline(config))

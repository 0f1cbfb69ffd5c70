"""Runs the pipeline locally with TFX's LocalDagRunner (Beam DirectRunner, SQLite MLMD)."""

from __future__ import annotations

from tfx import v1 as tfx

from pipeline import configs
from pipeline.pipeline import create_pipeline


def run(config: configs.PipelineConfig) -> None:
    tfx.orchestration.LocalDagRunner().run(create_pipeline(config))

"""MovieLensExampleGen: a TFX component that turns a raw MovieLens directory into Examples.

See executor.py for what it writes. Its execution properties include a fingerprint of the
input files, so a re-run over unchanged files is served from the cache while new or changed
files trigger a fresh ExampleGen and everything downstream.
"""

from __future__ import annotations

from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx import types
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components.movielens_example_gen import executor, movielens, splits


class MovieLensExampleGenSpec(ComponentSpec):
    PARAMETERS = {
        "data_dir": ExecutionParameter(type=str),
        "layout": ExecutionParameter(type=str),
        "split": ExecutionParameter(type=str),
        "seed": ExecutionParameter(type=int),
        "eval_fraction": ExecutionParameter(type=float),
        "input_fingerprint": ExecutionParameter(type=str),
        # a digest of the code that writes the examples (pipeline.configs.EXAMPLE_GEN_CODE)
        "code": ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {}
    OUTPUTS = {"examples": ChannelParameter(type=standard_artifacts.Examples)}


class MovieLensExampleGen(base_beam_component.BaseBeamComponent):
    SPEC_CLASS = MovieLensExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(self, data_dir: str, layout: str | None = None, split: str = splits.DEFAULT,
                 seed: int = 42, eval_fraction: float = 0.2,
                 input_fingerprint: str | None = None, code: str = ""):
        """data_dir: a MovieLens directory (layout detected when not given);
        split: 'random' (seeded 80/20, the seeds' protocol), 'time' (the newest ratings
        held out) or 'fold:NAME' (NAME.base / NAME.test, e.g. ml-100k's fold:u1)."""
        splits.ratings_sources(split)  # validates
        if not 0.0 < eval_fraction < 1.0:
            raise ValueError("eval_fraction must be between 0 and 1")
        super().__init__(spec=MovieLensExampleGenSpec(
            data_dir=str(data_dir),
            layout=layout or movielens.detect_layout(data_dir),
            split=split, seed=int(seed), eval_fraction=float(eval_fraction),
            input_fingerprint=(input_fingerprint if input_fingerprint is not None
                               else movielens.fingerprint(data_dir)),
            code=code, examples=types.Channel(type=standard_artifacts.Examples)))

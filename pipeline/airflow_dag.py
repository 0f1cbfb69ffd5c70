"""The movierec pipeline as an Apache Airflow DAG (TFX's AirflowDagRunner).

The DAG is built from the same ``pipeline.pipeline.create_pipeline(config)`` as
``movierec run``: one Airflow task per TFX component (task ids are the component ids,
``MovieLensExampleGen`` ... ``Pusher``), dag id ``movierec``. Each task runs its component
with TFX's launcher against the ML Metadata store in ``$MOVIEREC_OUTPUT_DIR``, so caching,
blessing against the latest blessed model and pushing work as in a local run.

Settings come from environment variables, read when Airflow parses the DAG (so set them
for the scheduler and the workers alike):

``MOVIEREC_DATA_DIR`` (required, absolute)
    A MovieLens directory: ml-100k (``u.data``, ``u.item``, ``u.user``), ml-1m
    (``ratings.dat`` ...) or ml-latest/ml-25m (``ratings.csv`` ...); the layout is detected
    from the file names, so the directory must exist when Airflow parses the DAG.
``MOVIEREC_OUTPUT_DIR`` (required, absolute)
    Pipeline root (``pipeline/``), ``metadata.sqlite`` and ``serving/movierec/<version>/``.
``MOVIEREC_SCHEDULE`` (default ``@daily``)
    An Airflow preset (``@hourly``, ``@weekly`` ...) or a cron expression (``0 3 * * *``);
    ``none`` for runs triggered by hand only.
``MOVIEREC_START_DATE`` (default ``2025-01-01``)
    ISO date (or date-time, UTC unless it has an offset) of the first schedule interval.
    Catch-up is off: only the latest interval runs, never a backlog.
``MOVIEREC_HPARAMS`` (default ``{}``)
    JSON object of trainer hyperparameters (``trainer.model.HParams`` fields), e.g.
    ``{"epochs": 3, "batch_size": 256}``.
``MOVIEREC_RMSE_UPPER_BOUND`` (optional)
    Blessing needs eval RMSE at most this (default: ``PipelineConfig``'s).

At most one run of the DAG is active at a time (runs share one metadata store); do not
point ``movierec run`` at the same output directory while the DAG may run.

To schedule it, put a file holding the one line::

    from pipeline.airflow_dag import DAG

in Airflow's dags folder (or copy or symlink this module there: loaded as a file of its
own, it builds the module-level ``DAG`` at once; imported as ``pipeline.airflow_dag``, it
builds ``DAG`` on first access, so its functions can be imported without Airflow or the
settings). ``pipeline`` must be importable by Airflow's processes: install movierec into
Airflow's environment (``pip install -e .[airflow]``) or put the repository root on
``PYTHONPATH``. A missing or bad setting shows up as an import error of that file in
Airflow, naming the variable.

Importing TensorFlow and TFX takes about 25 s of CPU, close to Airflow's default DAG import
timeout (30 s); raise ``AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT`` and
``AIRFLOW__CORE__DAG_FILE_PROCESSOR_TIMEOUT`` (e.g. to 120 and 180), and consider
``AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL`` (seconds between re-parses, default 30)
of a few minutes.
"""

from __future__ import annotations

import collections
import datetime
import json
import os
from typing import Any, Mapping

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before anything imports TensorFlow
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # hide CUDA-probe noise on CPU hosts

from pipeline.configs import PIPELINE_NAME as DAG_ID  # noqa: E402, F401 - the dag id

DEFAULT_SCHEDULE = "@daily"
DEFAULT_START_DATE = "2025-01-01"


class ConfigError(ValueError):
    """A missing or malformed MOVIEREC_* setting."""


def _absolute_dir(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is not set")
    value = os.path.expanduser(value)
    if not os.path.isabs(value):
        raise ConfigError(f"{name} must be an absolute path (Airflow's processes do not "
                          f"share a working directory), got {value!r}")
    return os.path.normpath(value)


def pipeline_config_from_env(environ: Mapping[str, str]):
    """The PipelineConfig that the MOVIEREC_* variables of `environ` describe."""
    from components.movielens_example_gen import movielens
    from pipeline import configs

    data_dir = _absolute_dir(environ, "MOVIEREC_DATA_DIR")
    try:
        layout = movielens.detect_layout(data_dir)
    except movielens.DataError as e:
        raise ConfigError(f"MOVIEREC_DATA_DIR: {e}") from e
    output_dir = _absolute_dir(environ, "MOVIEREC_OUTPUT_DIR")

    raw = environ.get("MOVIEREC_HPARAMS", "").strip() or "{}"
    try:
        hparams = json.loads(raw)
    except ValueError as e:
        raise ConfigError(f"MOVIEREC_HPARAMS is not valid JSON: {e}") from e
    if not isinstance(hparams, dict):
        raise ConfigError(f"MOVIEREC_HPARAMS must be a JSON object, got {raw!r}")
    from trainer.model import HParams

    try:
        HParams.from_dict(hparams)  # unknown names and bad values fail at parse time
    except (TypeError, ValueError) as e:
        raise ConfigError(f"MOVIEREC_HPARAMS: {e}") from e

    extra: dict[str, Any] = {}
    bound = environ.get("MOVIEREC_RMSE_UPPER_BOUND", "").strip()
    if bound:
        try:
            extra["rmse_upper_bound"] = float(bound)
        except ValueError as e:
            raise ConfigError(f"MOVIEREC_RMSE_UPPER_BOUND must be a number, "
                              f"got {bound!r}") from e
    return configs.PipelineConfig(data_dir=data_dir, output_dir=output_dir, layout=layout,
                                  hparams=hparams, **extra)


def dag_settings_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """Keyword arguments of airflow.models.DAG: schedule, start_date, catchup, ..."""
    schedule: str | None = environ.get("MOVIEREC_SCHEDULE", "").strip() or DEFAULT_SCHEDULE
    if schedule.lower() == "none":
        schedule = None
    text = environ.get("MOVIEREC_START_DATE", "").strip() or DEFAULT_START_DATE
    try:
        start = datetime.datetime.fromisoformat(text)
    except ValueError as e:
        raise ConfigError(f"MOVIEREC_START_DATE must be an ISO date such as 2025-01-01, "
                          f"got {text!r}") from e
    if start.tzinfo is None:
        start = start.replace(tzinfo=datetime.timezone.utc)
    return {"schedule": schedule, "start_date": start, "catchup": False,
            "max_active_runs": 1, "tags": ["movierec", "tfx"],
            "description": "MovieLens -> TFRS recommender (TFX pipeline)"}


def build_dag(environ: Mapping[str, str] | None = None):
    """The Airflow DAG of the movierec pipeline for the settings in `environ`."""
    environ = os.environ if environ is None else environ
    config = pipeline_config_from_env(environ)
    dag_settings = dag_settings_from_env(environ)

    from tfx.orchestration.airflow.airflow_dag_runner import (AirflowDagRunner,
                                                              AirflowPipelineConfig)

    from pipeline.pipeline import create_pipeline

    tfx_pipeline = create_pipeline(config)
    _adapt_to_legacy_drivers(tfx_pipeline)
    runner = AirflowDagRunner(AirflowPipelineConfig(airflow_dag_config=dag_settings))
    return runner.run(tfx_pipeline)


def _adapt_to_legacy_drivers(tfx_pipeline) -> None:
    """TFX's Airflow runner launches nodes with TFX's legacy drivers, which differ from the
    local runner's in two ways that matter to this pipeline; both are evened out here.

    - The ResolverDriver resolves every input channel to all matching artifacts of all
      runs. For a channel from a node of this pipeline (the baseline resolver's `candidate`,
      the Trainer's model) that means every model ever trained, not this run's, so the
      baseline would never be found. Such channels are resolved within the current run,
      as other components' inputs are.
    - Drivers name each output artifact '<output key>:<run id>', and ML Metadata wants
      (type, name) unique: two components with an output of the same key and type
      (Evaluator's and RetrievalEvaluator's ModelBlessing `blessing`) cannot both publish
      in one run. Such components name their artifacts
      '<component id>.<output key>:<run id>'.
    """
    from tfx.dsl.components.base import base_component
    from tfx.dsl.components.common import resolver

    components = [c for c in tfx_pipeline.components
                  if isinstance(c, base_component.BaseComponent)]
    outputs = collections.Counter((key, channel.type_name) for c in components
                                  for key, channel in c.outputs.items())
    for node in tfx_pipeline.components:
        if isinstance(node, resolver.Resolver):
            node.driver_class = _run_scoped_upstream_inputs(node.driver_class)
    for c in components:
        if any(outputs[(key, channel.type_name)] > 1 for key, channel in c.outputs.items()):
            c.driver_class = _component_named_outputs(c.driver_class)


def _run_scoped_upstream_inputs(driver_class):
    from tfx import types

    class Driver(driver_class):
        def _build_input_dict(self, pipeline_info, input_channels):
            upstream = {key for key, channel in input_channels.items()
                        if isinstance(channel, types.OutputChannel)}
            result = super()._build_input_dict(
                pipeline_info, {k: c for k, c in input_channels.items() if k not in upstream})
            for key in upstream:
                channel = input_channels[key]
                result[key] = self._metadata_handle.search_artifacts(
                    artifact_name=channel.output_key, pipeline_info=pipeline_info,
                    producer_component_id=channel.producer_component_id)
            return result

    Driver.__name__ = Driver.__qualname__ = f"RunScoped{driver_class.__name__}"
    return Driver


def _component_named_outputs(driver_class):
    class Driver(driver_class):
        def _prepare_output_artifacts(self, input_artifacts, output_dict, exec_properties,
                                      execution_id, pipeline_info, component_info):
            result = super()._prepare_output_artifacts(
                input_artifacts, output_dict, exec_properties, execution_id,
                pipeline_info, component_info)
            for artifacts in result.values():
                for artifact in artifacts:
                    artifact.name = f"{component_info.component_id}.{artifact.name}"
            return result

    Driver.__name__ = Driver.__qualname__ = f"ComponentNamed{driver_class.__name__}"
    return Driver


def __getattr__(name: str):
    # `from pipeline.airflow_dag import DAG` builds the DAG on first use, so that importing
    # this module for its functions needs neither Airflow nor the MOVIEREC_* settings.
    if name == "DAG":
        global DAG
        try:
            DAG = build_dag()
        except AttributeError as e:  # would read as "cannot import name 'DAG'"
            raise RuntimeError(f"building the movierec DAG failed: {e!r}") from e
        return DAG
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ != "pipeline.airflow_dag":
    # Loaded by Airflow as a file of the dags folder (a copy or a symlink of this module):
    # a module-level DAG for the DagBag to find.
    DAG = build_dag()

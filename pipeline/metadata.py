"""ML Metadata queries shared by the CLI (`run` summary, `inspect`).

A store is either an output directory's own SQLite file (OUT/metadata.sqlite) or a MySQL /
MariaDB database that several output directories may share (a mysql:// URI, see
configs.parse_metadata_uri). `connection_config` builds the ConnectionConfig of both;
`connect(source, pipeline_name)` opens one, and with a pipeline name gives a view of the
store that holds only that pipeline's runs, executions and artifacts (an output
directory's part of a shared store, see ScopedStore).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import sys
import tempfile
import time

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from pipeline import configs
from pipeline.errors import UserError
from trainer import storage

RUN_CONTEXT = "pipeline_run"
RUN_CONTEXTS = (RUN_CONTEXT, "run")
PIPELINE_CONTEXT = "pipeline"
# The password of a mysql:// URI without one (keeps it off command lines).
PASSWORD_ENV = "MOVIEREC_METADATA_PASSWORD"
_OPEN_ATTEMPTS = 10


class MetadataError(RuntimeError):
    """The metadata store is missing or unreachable, or holds no run."""


def is_uri(source: str) -> bool:
    """Whether `source` names a database server (mysql://...) rather than a path."""
    return "://" in str(source)


def describe(source: str) -> str:
    """`source` as it may be printed: a path, or the URI with its password masked."""
    return configs.mask_passwords(source)


def _sqlite_path(source: str) -> str:
    return (os.path.join(source, "metadata.sqlite") if os.path.isdir(source)
            else str(source))


def connection_config(source: str, mode: str = "read") -> metadata_store_pb2.ConnectionConfig:
    """The ConnectionConfig of a store: `source` a mysql:// URI (configs.METADATA_URI_FORM;
    the database must exist, a missing password is taken from $MOVIEREC_METADATA_PASSWORD)
    or a metadata.sqlite file or an output directory holding one. `mode`: read, write or
    create (SQLite: the file is made when missing; MySQL: no difference)."""
    config = metadata_store_pb2.ConnectionConfig()
    if is_uri(source):
        try:
            target = configs.parse_metadata_uri(source)
        except UserError as e:
            raise MetadataError(str(e)) from None
        config.mysql.host = target.host
        config.mysql.port = target.port
        config.mysql.database = target.database
        config.mysql.user = target.user
        password = (target.password if target.password is not None
                    else os.environ.get(PASSWORD_ENV))
        if password:
            config.mysql.password = password
        # a mistyped name is an error, never a new empty store
        config.mysql.skip_db_creation = True
        return config
    modes = metadata_store_pb2.SqliteMetadataSourceConfig
    path = _sqlite_path(source)
    if mode == "create":
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    config.sqlite.filename_uri = path
    config.sqlite.connection_mode = {"read": modes.READONLY, "write": modes.READWRITE,
                                     "create": modes.READWRITE_OPENCREATE}[mode]
    return config


def exists(source: str) -> bool:
    """Whether the store may hold runs: a SQLite file that is there, or any server (which
    connect checks)."""
    return is_uri(source) or os.path.isfile(_sqlite_path(source))


def connect(source: str, pipeline_name: str | None = None):
    """The store of `source` (see connection_config), read-only where it is SQLite; with
    `pipeline_name`, only that pipeline's part of it (ScopedStore). MetadataError (one
    line) when there is no store, the server cannot be reached or the database does not
    exist."""
    if not is_uri(source):
        path = _sqlite_path(source)
        if not os.path.isfile(path):
            raise MetadataError(f"no metadata store at {path}: run `movierec run` first")
    return _connect(source, writable=False, pipeline_name=pipeline_name)


def connect_reader(source: str, pipeline_name: str | None = None):
    """connect() for `inspect` and `report`: with `pipeline_name`, a MetadataError naming
    the pipelines that are there when that one has never run in the store."""
    store = connect(source, pipeline_name)
    if pipeline_name and store.pipeline_context() is None:
        known = sorted(c.name for c in store.whole.get_contexts_by_type(PIPELINE_CONTEXT))
        raise MetadataError(
            f"pipeline {pipeline_name} has no run in {describe(source)} (the pipeline of "
            f"an output directory is named after it; --pipeline-name picks another); "
            f"known: {', '.join(known[:8]) or 'none'}")
    return store


def _connect(source: str, writable: bool, pipeline_name: str | None = None):
    store = _open(source, connection_config(source, "write" if writable else "read"))
    return ScopedStore(store, pipeline_name) if pipeline_name else store


@contextlib.contextmanager
def _stderr_to(file):
    """File descriptor 2 into `file` for a while: MLMD's C++ client logs a failed MySQL
    connection on stderr itself, beside the exception that says it again."""
    saved = os.dup(2)
    try:
        os.dup2(file.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _open(source: str, config) -> metadata_store.MetadataStore:
    if not config.HasField("mysql"):
        return metadata_store.MetadataStore(config)
    mysql = config.mysql
    address = f"{mysql.host}:{mysql.port}"
    try:  # a refused or silent address fails here, at once or in seconds
        socket.create_connection((mysql.host, mysql.port), timeout=10).close()
    except OSError as e:
        raise MetadataError(f"cannot reach the metadata database server at {address}: "
                            f"{e.strerror or e}") from None
    sys.stderr.flush()
    for _ in range(_OPEN_ATTEMPTS):
        with tempfile.TemporaryFile() as log:
            try:
                with _stderr_to(log):
                    return metadata_store.MetadataStore(config)
            except Exception as e:  # noqa: BLE001 - MLMD raises RuntimeError, or its errors
                text = str(e)
        # Two runs that connect at once to a new, empty database race to create MLMD's
        # tables; the loser is told to retry (as TFX's own connection does).
        if "retry" not in text.lower() and "deadlock" not in text.lower():
            break
        time.sleep(0.2 + random.random())
    if "database" in text and ("Unknown database" in text or "Access denied" in text
                               or "Changing to database" in text):
        raise MetadataError(f"no database {mysql.database!r} on the metadata database "
                            f"server at {address} (or user {mysql.user!r} may not use it): "
                            f"create it first") from None
    if "mysql_real_connect" in text:
        raise MetadataError(f"the metadata database server at {address} refused user "
                            f"{mysql.user!r} (wrong user or password?)") from None
    raise MetadataError(f"cannot open ML Metadata in database {mysql.database!r} at "
                        f"{address}: {configs.mask_passwords(text).splitlines()[0]}") from None


class ScopedStore:
    """One pipeline's part of a store that several pipelines share (output directories on
    one database server): the store's methods, where those that list the whole store
    (runs, artifacts by type, executions) list only what is attributed to the pipeline's
    context. Everything by id (an artifact's lineage) is the store's as it is."""

    def __init__(self, store, pipeline_name: str):
        self.whole, self.pipeline_name = store, pipeline_name  # whole: the store itself

    def __getattr__(self, name):
        return getattr(self.whole, name)

    def pipeline_context(self):
        return self.whole.get_context_by_type_and_name(PIPELINE_CONTEXT, self.pipeline_name)

    def get_contexts_by_type(self, type_name, *args, **kwargs):
        contexts = self.whole.get_contexts_by_type(type_name, *args, **kwargs)
        if type_name == PIPELINE_CONTEXT:
            return [c for c in contexts if c.name == self.pipeline_name]
        if type_name == NODE_CONTEXT:
            return [c for c in contexts if c.name.startswith(self.pipeline_name + ".")]
        if type_name not in RUN_CONTEXTS:
            return contexts
        pipeline = self.pipeline_context()
        children = ({c.id for c in self.whole.get_children_contexts_by_context(pipeline.id)}
                    if pipeline else set())
        # LocalDagRunner's runs are children of the pipeline context; the Airflow runner's
        # `run` contexts name their pipeline in a property instead
        return [c for c in contexts if c.id in children or (
            "pipeline_name" in c.properties
            and c.properties["pipeline_name"].string_value == self.pipeline_name)]

    def get_artifacts(self, *args, **kwargs):
        pipeline = self.pipeline_context()
        return self.whole.get_artifacts_by_context(pipeline.id) if pipeline else []

    def get_artifacts_by_type(self, type_name, *args, **kwargs):
        ids = {a.id for a in self.get_artifacts()}
        return [a for a in self.whole.get_artifacts_by_type(type_name, *args, **kwargs)
                if a.id in ids]

    def get_executions(self, *args, **kwargs):
        pipeline = self.pipeline_context()
        return self.whole.get_executions_by_context(pipeline.id) if pipeline else []


def runs(store) -> list:
    """Pipeline-run contexts, oldest first (LocalDagRunner's `pipeline_run` contexts, or
    the Airflow runner's `run` ones)."""
    contexts = [c for kind in RUN_CONTEXTS for c in store.get_contexts_by_type(kind)]
    return sorted(contexts, key=lambda c: (c.create_time_since_epoch, c.id))


def find_run(store, run_id: str | None = None, evaluated: bool = False):
    """The run named `run_id`, else the latest run (with `evaluated`: the latest run that
    got as far as an evaluation, so a run that failed early does not hide the metrics)."""
    all_runs = runs(store)
    if not all_runs:
        raise MetadataError("the metadata store holds no pipeline run")
    if run_id is None:
        if evaluated:
            for context in reversed(all_runs):
                if run_artifacts(store, context, "ModelEvaluation"):
                    return context
        return all_runs[-1]
    for context in all_runs:
        if context.name == run_id or str(context.id) == str(run_id):
            return context
    raise MetadataError(f"no run {run_id!r}; known runs: "
                        + ", ".join(c.name for c in all_runs[-5:]))


def _type_names(store) -> dict:
    return {t.id: t.name for t in store.get_artifact_types()}


def run_artifacts(store, context, type_name: str | None = None) -> list:
    """Artifacts attributed to or produced within a run, oldest first."""
    names = _type_names(store)
    artifacts = store.get_artifacts_by_context(context.id)
    if type_name:
        artifacts = [a for a in artifacts if names.get(a.type_id) == type_name]
    return sorted(artifacts, key=lambda a: a.id)


def custom(artifact, key: str, default=None):
    if key not in artifact.custom_properties:
        return default
    value = artifact.custom_properties[key]
    kind = value.WhichOneof("value")
    if kind == "proto_value":  # TFX stores some values as Value protos
        return default
    return getattr(value, kind)


def _tfma_metrics(uri: str) -> dict:
    import logging

    import tensorflow_model_analysis as tfma  # heavy: only when asked

    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # TFMA's deprecation notes
    names = {"root_mean_squared_error": "rmse", "mean_absolute_error": "mae",
             "mean_squared_error": "mse", "example_count": "example_count"}
    out = {}
    storage.register(uri)  # TFMA reads through tf.io.gfile
    for metrics in tfma.load_metrics(uri):
        if metrics.slice_key.single_slice_keys:
            continue  # overall slice only
        for item in metrics.metric_keys_and_values:
            key = item.key
            if key.is_diff or key.model_name not in ("", "candidate"):
                continue
            if key.name in names:
                out[names[key.name]] = item.value.double_value.value
    if "example_count" in out:
        out["example_count"] = int(out["example_count"])
    return out


def run_metrics(store, context) -> dict:
    """The eval metrics, blessing and push of one run, as one flat dict."""
    from components.retrieval_evaluator import read_metrics

    result = {"run_id": context.name, "blessed": None, "pushed_model": None}
    evaluations = run_artifacts(store, context, "ModelEvaluation")
    if evaluations:
        result.update(_tfma_metrics(evaluations[-1].uri))
    retrieval = run_artifacts(store, context, "movierec.RetrievalEvaluation")
    if retrieval:
        result.update(read_metrics(retrieval[-1].uri))
    blessings = run_artifacts(store, context, "ModelBlessing")
    final = [b for b in blessings if custom(b, "reason") is not None] or blessings
    if final:
        result["blessed"] = bool(custom(final[-1], "blessed", 0))
        result["blessing_reason"] = custom(final[-1], "reason")
    examples = run_artifacts(store, context, "Examples")
    if examples:
        result["examples"] = examples[-1].uri
    models = run_artifacts(store, context, "Model")
    if models:
        result["model"] = models[-1].uri
    pushes = run_artifacts(store, context, "PushedModel")
    if pushes and custom(pushes[-1], "pushed", 0):
        result["pushed_model"] = custom(pushes[-1], "pushed_destination")
    return result


def best_hyperparameters(store, context=None) -> dict:
    """The values of the latest Tuner's best hyperparameters (of `context`, else any)."""
    artifacts = (run_artifacts(store, context, "HyperParameters") if context else
                 sorted(store.get_artifacts_by_type("HyperParameters"), key=lambda a: a.id))
    if not artifacts:
        return {}
    with storage.open(storage.join(artifacts[-1].uri, "best_hyperparameters.txt")) as f:
        return json.load(f).get("values", {})


# ------------------------------------------------------------------ runs, artifacts, lineage
_STATE_NAMES = {
    metadata_store_pb2.Execution.COMPLETE: "executed",
    metadata_store_pb2.Execution.CACHED: "cached",
    metadata_store_pb2.Execution.FAILED: "failed",
    metadata_store_pb2.Execution.RUNNING: "running",
    metadata_store_pb2.Execution.NEW: "new",
    metadata_store_pb2.Execution.CANCELED: "canceled",
}
NODE_CONTEXT = "node"
COMPONENT_RUN_CONTEXT = "component_run"  # the Airflow runner's, one per component and run
# Annotations the movierec runner adds to a pipeline_run context (see annotate_run).
RUN_ANNOTATIONS = ("wall_seconds", "beam_pipeline_args", "command")


def _value(value):
    kind = value.WhichOneof("value")
    if kind is None or kind == "proto_value":
        return None
    if kind == "struct_value":
        from google.protobuf import json_format
        return json_format.MessageToDict(value.struct_value)
    plain = getattr(value, kind)
    if isinstance(plain, str) and plain.startswith('{"__value__"'):
        try:  # TFX's JSON wrapping of some properties
            plain = json.loads(plain)["__value__"]
        except (ValueError, KeyError):
            pass
    return plain


def properties(item) -> dict:
    """Properties and custom properties of an artifact, execution or context, as plain
    values (TFX-internal '__...' keys left out)."""
    out = {}
    for props in (item.properties, item.custom_properties):
        for key, value in props.items():
            if not key.startswith("__"):
                plain = _value(value)
                if plain is not None:
                    out[key] = plain
    return out


class _Index:
    """Lookups shared by one query: type names, executions' components and runs."""

    def __init__(self, store):
        self.store = store
        self.artifact_types = {t.id: t.name for t in store.get_artifact_types()}
        self._component, self._run = {}, {}

    def _contexts(self, execution_id):
        if execution_id not in self._component:
            component = run = None
            for context in self.store.get_contexts_by_execution(execution_id):
                if context.type == NODE_CONTEXT:
                    component = context.name.split(".", 1)[-1]
                elif context.type == COMPONENT_RUN_CONTEXT:  # TFX's legacy drivers
                    component = context.properties["component_id"].string_value or None
                elif context.type in RUN_CONTEXTS:
                    run = context.name
            self._component[execution_id], self._run[execution_id] = component, run
        return self._component[execution_id], self._run[execution_id]

    def component(self, execution_id):
        return self._contexts(execution_id)[0]

    def run(self, execution_id):
        return self._contexts(execution_id)[1]

    def producers(self, artifact_ids) -> dict:
        """artifact id -> the execution id that output it."""
        out = {}
        for event in self.store.get_events_by_artifact_ids(list(artifact_ids)):
            if event.type == metadata_store_pb2.Event.OUTPUT:
                out.setdefault(event.artifact_id, event.execution_id)
        return out

    def artifact_row(self, artifact, producer_execution=None) -> dict:
        return {"id": artifact.id, "type": self.artifact_types.get(artifact.type_id, "?"),
                "uri": artifact.uri,
                "producer": self.component(producer_execution) if producer_execution
                else None,
                "run": self.run(producer_execution) if producer_execution else None,
                "created": _iso(artifact.create_time_since_epoch),
                "state": metadata_store_pb2.Artifact.State.Name(artifact.state).lower(),
                "properties": properties(artifact)}


def _iso(millis: int) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(millis / 1000, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


# Recorded by annotate_run on an execution before it updates it (the update moves MLMD's
# last_update_time, which would lengthen the execution by the rest of the run): when the
# execution was published, in ms since the epoch.
END_PROPERTY = "end_time_since_epoch"
_INTERRUPTED = "interrupted"


def output_event_times(store, executions) -> dict:
    """execution id -> the latest time (ms) an OUTPUT event of it was recorded: when TFX
    published the execution with its outputs (executed or cached), whatever was written
    to the execution later."""
    out = {}
    ids = [e.id for e in executions]
    if not ids:
        return out
    for event in store.get_events_by_execution_ids(ids):
        if event.type == metadata_store_pb2.Event.OUTPUT and event.milliseconds_since_epoch:
            out[event.execution_id] = max(out.get(event.execution_id, 0),
                                          event.milliseconds_since_epoch)
    return out


def execution_end(execution, output_time: int | None = None) -> int | None:
    """When an execution itself ended (ms since the epoch), not when MLMD last wrote it:
    the end recorded before movierec's own annotations (END_PROPERTY), else the time of
    its OUTPUT events (stores annotated before END_PROPERTY existed), else
    last_update_time (runs nothing wrote to afterwards: other orchestrators, failed
    executions). None for an execution of a killed run (close_interrupted): when it
    stopped is unknown."""
    if _INTERRUPTED in execution.custom_properties:
        return None
    if END_PROPERTY in execution.custom_properties:
        recorded = execution.custom_properties[END_PROPERTY]
        if recorded.WhichOneof("value") == "int_value":
            return recorded.int_value
    end = execution.last_update_time_since_epoch
    if output_time and execution.create_time_since_epoch <= output_time < end:
        end = output_time
    return end


def execution_seconds(execution, output_time: int | None = None) -> float | None:
    """An execution's own duration in seconds (see execution_end); None when unknown.
    `inspect runs`, the run summary and anything else showing per-component seconds use
    this one figure."""
    end = execution_end(execution, output_time)
    if end is None:
        return None
    return round(max(end - execution.create_time_since_epoch, 0) / 1000, 3)


def run_summary(store, context, index: _Index | None = None) -> dict:
    """One pipeline run: start/end, wall time, and each component's state (executed,
    cached, failed, ...) with its own duration (execution_seconds), in execution order."""
    index = index or _Index(store)
    executions = sorted(store.get_executions_by_context(context.id), key=lambda e: e.id)
    published = output_event_times(store, executions)
    components = [{
        "component": index.component(e.id),
        "state": _STATE_NAMES.get(e.last_known_state, "unknown"),
        "seconds": execution_seconds(e, published.get(e.id)),
        "execution_id": e.id,
    } for e in executions]
    # An orchestrator that retries a task (Airflow) leaves the attempts it gave up on
    # (canceled, failed) before the one that counts: each component's latest decides.
    latest = {c["component"] or c["execution_id"]: c["state"] for c in components}
    states = set(latest.values())
    annotations = properties(context)
    start = min((e.create_time_since_epoch for e in executions),
                default=context.create_time_since_epoch)
    ends = [execution_end(e, published.get(e.id)) for e in executions]
    end = max((e if e is not None else x.create_time_since_epoch
               for e, x in zip(ends, executions)), default=start)
    return {
        "run_id": context.name,
        "start": _iso(start), "end": _iso(end),
        # the movierec runner records the whole command's wall time; other orchestrators
        # leave the span of the executions
        "wall_seconds": annotations.get("wall_seconds", round((end - start) / 1000, 1)),
        "executions_seconds": round((end - start) / 1000, 1),
        "state": ("failed" if "failed" in states else "interrupted" if "canceled" in states
                  else "running" if "running" in states
                  else "cached" if states == {"cached"} else "complete"),
        "cached": sum(c["state"] == "cached" for c in components),
        "executed": sum(c["state"] == "executed" for c in components),
        "components": components,
        **{k: annotations[k] for k in RUN_ANNOTATIONS if k in annotations and
           k != "wall_seconds"},
    }


def artifacts(store, run_id: str | None = None, type_name: str | None = None) -> list:
    """Artifacts (of one run and/or one type), oldest first, with their producer."""
    index = _Index(store)
    if run_id is not None:
        found = run_artifacts(store, find_run(store, run_id), type_name)
    elif type_name:
        found = sorted(store.get_artifacts_by_type(type_name), key=lambda a: a.id)
    else:
        found = sorted(store.get_artifacts(), key=lambda a: a.id)
    if type_name and type_name not in index.artifact_types.values():
        raise MetadataError(f"no artifact type {type_name!r}; known: "
                            + ", ".join(sorted(set(index.artifact_types.values()))))
    producers = index.producers(a.id for a in found) if found else {}
    return [index.artifact_row(a, producers.get(a.id)) for a in found]


def latest_pushed(store):
    """The newest PushedModel artifact that was actually pushed, or None."""
    pushed = [a for a in store.get_artifacts_by_type("PushedModel") if custom(a, "pushed", 0)]
    return max(pushed, key=lambda a: a.id) if pushed else None


# Inputs that point at an earlier run's model: listed in a lineage, not followed.
_BASELINE_KEYS = ("baseline_model",)
_EVALUATION_TYPES = ("ModelEvaluation", "movierec.RetrievalEvaluation")


def lineage(store, artifact_id: int) -> list:
    """The chain that produced an artifact, depth first from it upstream: each artifact
    with the component that produced it and the key by which its consumer read it. The
    baseline model an evaluator compared against is listed but not followed (it belongs
    to an earlier run's lineage); an artifact reached twice is listed once."""
    index = _Index(store)
    found = store.get_artifacts_by_id([int(artifact_id)])
    if found and isinstance(store, ScopedStore) and found[0].id not in {
            a.id for a in store.get_artifacts()}:
        raise MetadataError(f"artifact {artifact_id} is not of pipeline "
                            f"{store.pipeline_name} (another output directory's)")
    if not found:
        raise MetadataError(f"no artifact with id {artifact_id}")
    rows, seen = [], set()

    def visit(artifact, depth, input_key):
        producer = index.producers([artifact.id]).get(artifact.id)
        row = index.artifact_row(artifact, producer)
        row.update(depth=depth, input_key=input_key)
        if artifact.id in seen:
            row["repeat"] = True
            rows.append(row)
            return
        seen.add(artifact.id)
        rows.append(row)
        if producer is None or input_key in _BASELINE_KEYS:
            return
        events = store.get_events_by_execution_ids([producer])
        # the evaluation written beside a blessing: listed, it is not an input
        siblings = [e.artifact_id for e in events if e.type == metadata_store_pb2.Event.OUTPUT
                    and e.artifact_id != artifact.id]
        for sibling in store.get_artifacts_by_id(siblings):
            if index.artifact_types.get(sibling.type_id) in _EVALUATION_TYPES:
                rows.append({**index.artifact_row(sibling, producer), "depth": depth + 1,
                             "input_key": "evaluation"})
        inputs = [e for e in events if e.type == metadata_store_pb2.Event.INPUT]
        inputs.sort(key=lambda e: (e.path.steps[0].key if e.path.steps else "", e.artifact_id))
        parents = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in inputs])}
        for event in inputs:
            key = event.path.steps[0].key if event.path.steps else None
            if event.artifact_id in parents:
                visit(parents[event.artifact_id], depth + 1, key)

    visit(found[0], 0, None)
    return rows


def lineage_input(rows: list) -> dict:
    """The input data directory and fingerprint at the root of a lineage."""
    for row in rows:
        props = row["properties"]
        if "input_dir" in props:
            return {"input_dir": props["input_dir"],
                    "input_fingerprint": props.get("input_fingerprint"),
                    "layout": props.get("layout"), "examples": row["uri"]}
    return {}


def diff(store, run_a: str, run_b: str) -> dict:
    """Eval metrics of two runs side by side: {metric: {a, b, delta}}."""
    a = run_metrics(store, find_run(store, run_a))
    b = run_metrics(store, find_run(store, run_b))
    out = {}
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        entry = {"a": va, "b": vb}
        if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and not (
                isinstance(va, bool) or isinstance(vb, bool)):
            entry["delta"] = vb - va
        out[key] = entry
    return {"run_a": a["run_id"], "run_b": b["run_id"], "metrics": out}


def run_count(source: str, pipeline_name: str | None = None) -> int:
    """How many runs the store holds (of `pipeline_name`, else all); 0 without a store."""
    return len(runs(connect(source, pipeline_name))) if exists(source) else 0


def annotate_run(source: str, values: dict, beam_components=(), beam_args=None,
                 runs_before: int = 0, pipeline_name: str | None = None) -> None:
    """Records movierec's own facts about the latest run (of `pipeline_name`, else of the
    store) in the store (read-write): the command's wall time etc. on the pipeline_run
    context, and the Beam pipeline args on the executions of the Beam-powered components
    of that run. Nothing when no run was added since there were `runs_before`."""
    store = _connect(source, writable=True, pipeline_name=pipeline_name)
    all_runs = runs(store)
    if len(all_runs) <= runs_before:
        return
    context = all_runs[-1]
    for key, value in values.items():
        _set(context.custom_properties[key], value)
    store.put_contexts([context])
    if beam_args is not None:
        index = _Index(store)
        executions = [e for e in store.get_executions_by_context(context.id)
                      if index.component(e.id) in beam_components]
        published = output_event_times(store, executions)
        for execution in executions:
            _keep_end(execution, published.get(execution.id))
            _set(execution.custom_properties["beam_pipeline_args"], json.dumps(beam_args))
        if executions:
            store.put_executions(executions)


def _keep_end(execution, output_time: int | None = None) -> None:
    """Records when an execution ended (END_PROPERTY) before it is updated, as the update
    moves its last_update_time; an end recorded earlier is kept, and an execution still
    open (a run stopped inside it) gets none: close_interrupted closes it later."""
    open_states = (metadata_store_pb2.Execution.RUNNING, metadata_store_pb2.Execution.NEW)
    if (END_PROPERTY not in execution.custom_properties
            and execution.last_known_state not in open_states):
        end = execution_end(execution, output_time)
        if end is not None:
            execution.custom_properties[END_PROPERTY].int_value = end


def _set(value, plain) -> None:
    if isinstance(plain, (bool, int)):
        value.int_value = int(plain)
    elif isinstance(plain, float):
        value.double_value = plain
    else:
        value.string_value = str(plain)


def close_interrupted(source: str, pipeline_name: str | None = None,
                      component: str | None = None,
                      reason: str = "the run was killed before this execution finished"
                      ) -> int:
    """Executions left RUNNING by a run that was killed (the caller holds the output
    directory's lock, so no run of it is in progress) become CANCELED, and the outputs
    they had begun become ABANDONED: later runs and `inspect` never mistake them for live
    work. With `pipeline_name` (a shared store) only that pipeline's executions: another
    output directory's run may be in progress on the same database. With `component`,
    only that component's executions (the caller knows that no other execution of it runs:
    an Airflow task about to run it). Returns how many executions were closed."""
    if not exists(source):
        return 0
    store = _connect(source, writable=True, pipeline_name=pipeline_name)
    stale = [e for e in store.get_executions() if e.last_known_state in _OPEN_STATES]
    if component is not None:
        index = _Index(store)
        stale = [e for e in stale if index.component(e.id) == component]
    _cancel(store, stale, reason)
    if stale:
        store.put_executions(stale)
    return len(stale)


_OPEN_STATES = (metadata_store_pb2.Execution.RUNNING, metadata_store_pb2.Execution.NEW)
ATTEMPT_MARK = "@attempt-"  # of a component run set aside for a retry (set_aside_attempt)


def _cancel(store, executions, reason: str) -> None:
    """Marks the open ones of `executions` CANCELED (the caller puts them), and the outputs
    they had begun ABANDONED."""
    stale = [e for e in executions if e.last_known_state in _OPEN_STATES]
    for execution in stale:
        execution.last_known_state = metadata_store_pb2.Execution.CANCELED
        execution.custom_properties[_INTERRUPTED].string_value = reason
    if not stale:
        return
    outputs = [e.artifact_id for e in store.get_events_by_execution_ids([e.id for e in stale])
               if e.type in (metadata_store_pb2.Event.OUTPUT,
                             metadata_store_pb2.Event.PENDING_OUTPUT)]
    pending = [a for a in store.get_artifacts_by_id(outputs)
               if a.state in (metadata_store_pb2.Artifact.PENDING,
                              metadata_store_pb2.Artifact.UNKNOWN)]
    for artifact in pending:
        artifact.state = metadata_store_pb2.Artifact.ABANDONED
    if pending:
        store.put_artifacts(pending)


def set_aside_attempt(source: str, pipeline_name: str, run_id: str, component: str,
                      reason: str) -> int:
    """Before a component runs again within the same run of TFX's Airflow runner (an
    Airflow retry, or a task cleared by hand): what the earlier attempt left in ML Metadata
    is set aside, so that the new attempt is an execution of its own. Returns how many
    executions were set aside (0: no earlier attempt got as far as ML Metadata).

    TFX's legacy drivers keep one execution per component and run, in a `component_run`
    context, and find an upstream component's outputs through the first execution of the
    run that names that component. An earlier attempt's context and execution would make
    the new attempt overwrite the old execution (which ML Metadata refuses: its input
    events exist) and hide the new outputs. So the earlier attempt's open execution
    becomes CANCELED (`reason` recorded, begun outputs ABANDONED), and its context and
    executions are renamed '<name>@attempt-<k>' (component_id of the executions; the
    context keeps the component's id, which `inspect` shows). (Artifacts cannot be
    renamed: the Airflow DAG's drivers give the new attempt's outputs names of their
    own.) `source`: a SQLite path or a mysql:// URI."""
    if not exists(source):
        return 0
    store = _connect(source, writable=True)
    contexts = store.get_contexts_by_type(COMPONENT_RUN_CONTEXT)

    def values(context):
        return tuple(context.properties[key].string_value
                     for key in ("pipeline_name", "run_id", "component_id"))

    ours = [c for c in contexts if values(c) == (pipeline_name, run_id, component)]
    current = [c for c in ours if ATTEMPT_MARK not in c.name]
    if not current:
        return 0
    attempt = f"{ATTEMPT_MARK}{len(ours) - len(current) + 1}"
    executions = []
    for context in current:
        executions += store.get_executions_by_context(context.id)
        context.name += attempt
    _cancel(store, executions, reason)
    for execution in executions:
        execution.properties["component_id"].string_value = component + attempt
    if executions:
        store.put_executions(executions)
    store.put_contexts(current)
    return len(executions)

"""One dataclass of pipeline settings (paths, hyperparameters, thresholds, defaults) and
the one function that builds it from a front end's options.

`from_options(mapping)` is the only place that validates settings: `movierec run` / `tune`
(pipeline/cli.py), the Airflow DAG (MOVIEREC_* environment variables,
pipeline/airflow_dag.py) and the Kubeflow export (pipeline/kubeflow.py) each turn what they
were given into a mapping of option names and hand it over, so that the same setting gives
the same PipelineConfig, or the same one-line UserError, whichever front end it came from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import posixpath
import re
import urllib.parse
from typing import Any, Mapping, Sequence

from pipeline.errors import UserError
from trainer import storage

PIPELINE_NAME = "movierec"
MODEL_NAME = "movierec"
SCHEMA_DIR = pathlib.Path(__file__).parent / "schemas"
_REPO_PACKAGES = pathlib.Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class PipelineConfig:
    data_dir: str
    output_dir: str
    layout: str = ""  # detected from data_dir when empty
    split: str = "time"  # a protocol of components/movielens_example_gen/splits.py (DEFAULT)
    seed: int = 42
    eval_fraction: float = 0.2
    # Trainer hyperparameters overriding trainer.model.HParams' defaults.
    hparams: Mapping = dataclasses.field(default_factory=dict)
    # Transform's timestamp buckets (quantiles of the training ratings' times; None: its
    # default, trainer.features.DEFAULT_TIMESTAMP_BUCKETS); the Trainer sizes its
    # embedding from the transformed schema.
    timestamp_buckets: int | None = None
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
    # The pipeline's name in ML Metadata (its pipeline context, cache keys, baseline
    # queries). from_options derives one per output directory when the store is shared
    # (metadata_uri), see shared_pipeline_name.
    pipeline_name: str = PIPELINE_NAME
    # ML Metadata on a database server: mysql://USER[:PASS]@HOST[:PORT]/DB (MySQL or
    # MariaDB); empty: SQLite at OUT/metadata.sqlite.
    metadata_uri: str = ""

    @property
    def pipeline_root(self) -> str:
        return self.pipeline_root_override or os.path.join(self.output_dir, "pipeline")

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.output_dir, "metadata.sqlite")

    @property
    def shared_metadata(self) -> bool:
        """Whether ML Metadata is a database server that other output directories may
        share (metadata_uri), rather than this output directory's own SQLite file."""
        return bool(self.metadata_uri)

    @property
    def metadata_source(self) -> str:
        """What pipeline.metadata connects to: the mysql:// URI, else the SQLite path."""
        return self.metadata_uri or self.metadata_path

    @property
    def metadata_scope(self) -> str | None:
        """The pipeline whose runs are this output directory's in the store: the pipeline
        name in a shared store, None (everything) in the output directory's own SQLite."""
        return self.pipeline_name if self.shared_metadata else None

    def metadata_connection_config(self):
        """The ml_metadata ConnectionConfig the pipeline runs with (SQLite file created
        when missing; a MySQL database must exist)."""
        from pipeline import metadata

        return metadata.connection_config(self.metadata_source, mode="create")

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
        args += storage.beam_args([self.data_dir, self.pipeline_root, self.serving_dir],
                                  args)
        if (_runner_name(args) in JOB_SERVICE_RUNNERS
                and _beam_option(args, "--job_server_timeout", "--job-server-timeout") is None):
            args.append(f"--job_server_timeout={JOB_SERVER_TIMEOUT_S}")
        return args


# Runners that hand the job to a job service and watch it from there: PortableRunner and
# the runners built on it (Beam's names, lower case, without "runner"). Beam stops
# watching a job after --job_server_timeout seconds (60 by default, less than Transform
# takes on ML-100K) with "Deadline Exceeded" while the job goes on running, so unless the
# args say otherwise a Beam component's job may take a day.
JOB_SERVICE_RUNNERS = ("portable", "flink", "spark", "prism")
JOB_SERVER_TIMEOUT_S = 24 * 3600


def _beam_option(args: Sequence[str], *names: str) -> str | None:
    """The value of the last of `names` in Beam args (`--name=VALUE` or `--name VALUE`)."""
    value = None
    for i, arg in enumerate(args):
        name, sep, given = arg.partition("=")
        if name in names:
            value = given if sep else (args[i + 1] if i + 1 < len(args) else "")
    return value


def _runner_name(args: Sequence[str]) -> str:
    """The runner the Beam args name, as Beam resolves it: the class name, lower case,
    without "runner" ('portable' for --runner=PortableRunner); '' for the default."""
    name = (_beam_option(args, "--runner") or "").rsplit(".", 1)[-1].lower()
    return name[:-len("runner")] if name.endswith("runner") else name


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
TRAINER_CODE = TRANSFORM_CODE + ("trainer/model.py", "trainer/towers.py",
                                  "trainer/embedding.py", "trainer/history.py",
                                  "trainer/pooling.py", "trainer/run.py", "trainer/data.py",
                                  "trainer/fit.py", "trainer/distribution.py",
                                  "trainer/export.py", "trainer/signatures.py",
                                  "trainer/saved_model.py", "trainer/warm_start.py",
                                  "trainer/neighborhood.py", "trainer/asymmetric.py",
                                  "trainer/popularity.py", "trainer/factorization.py",
                                  "trainer/tracing.py")
TUNER_CODE = TRAINER_CODE + ("trainer/tuning.py",)
# what MovieLensExampleGen runs: what it writes changes with them (e.g. the request context
# of a time split's eval examples), so they key its cache as well as the input files
EXAMPLE_GEN_CODE = ("components/movielens_example_gen/executor.py",
                    "components/movielens_example_gen/movielens.py",
                    "components/movielens_example_gen/splits.py", "trainer/examples.py",
                    "trainer/features.py", "trainer/metrics.py", "trainer/replay.py",
                    "trainer/signatures.py", "trainer/storage.py")


# ----------------------------------------------------------------------- metadata store
METADATA_URI_FORM = "mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
MYSQL_DEFAULT_PORT = 3306
_MAX_PIPELINE_NAME = 63  # TFX's limit


@dataclasses.dataclass(frozen=True)
class MySQLTarget:
    """A parsed metadata_uri (user and password percent-decoded)."""
    user: str
    password: str | None
    host: str
    port: int
    database: str

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def masked(self) -> str:
        """The URI as it may be printed or recorded: the password as ***."""
        secret = ":***" if self.password is not None else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (f"mysql://{urllib.parse.quote(self.user, safe='')}{secret}@{host}:"
                f"{self.port}/{self.database}")


def parse_metadata_uri(uri: str) -> MySQLTarget:
    """The MySQL / MariaDB server, user and database of `uri`; UserError (one line, the
    password masked) when it is not of the form METADATA_URI_FORM."""
    text = str(uri).strip()

    def bad(why: str) -> UserError:
        return UserError(f"metadata_uri {mask_passwords(text)!r}: {why} (expected "
                         f"{METADATA_URI_FORM})")

    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as e:  # a port that is not a number or out of range
        raise bad(str(e)) from None
    if parts.scheme.lower() != "mysql":
        raise bad("only mysql:// (MySQL or MariaDB) is supported; without metadata_uri "
                  "the store is SQLite in the output directory")
    if parts.query or parts.fragment:
        raise bad("no ?query or #fragment is taken")
    if not parts.hostname:
        raise bad("no host")
    if not parts.username:
        raise bad("no user")
    database = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not database or "/" in database:
        raise bad("the path must be one database name")
    if not re.fullmatch(r"[A-Za-z0-9_$-]{1,64}", database):
        raise bad(f"database name {database!r} is not letters, digits, _, $ or -")
    if port == 0:
        raise bad("port 0")
    password = parts.password
    return MySQLTarget(user=urllib.parse.unquote(parts.username),
                       password=None if password is None else urllib.parse.unquote(password),
                       host=parts.hostname, port=port or MYSQL_DEFAULT_PORT,
                       database=database)


# scheme://user:PASSWORD@ (the password ends at the netloc's last '@', as urllib reads it)
_URI_PASSWORD = re.compile(r"\b([a-z][a-z0-9+.-]*://[^\s:/@[]*:)[^\s/?#]*@", re.IGNORECASE)


# password: "..." (a ConnectionConfig as text, as TFX logs it) or "password": "..." (JSON)
_FIELD_PASSWORD = re.compile(r'(\bpassword"?\s*[:=]\s*")(?:[^"\\]|\\.)*"')


def mask_passwords(text: str) -> str:
    """`text` with every password in it replaced by ***: of a URI
    (mysql://user:PASSWORD@...) or of a connection config's `password` field."""
    return _FIELD_PASSWORD.sub(r'\1***"', _URI_PASSWORD.sub(r"\1***@", str(text)))


def shared_pipeline_name(output_dir: str) -> str:
    """The pipeline name of an output directory in a shared store:
    movierec-<directory name>-<digest of its absolute path>, so that two output
    directories on one database are two pipelines (own runs, cache and baselines) and the
    same directory is the same pipeline run after run."""
    path = os.path.abspath(os.path.expanduser(str(output_dir)))
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", os.path.basename(path.rstrip("/"))).strip("-")
    digest = hashlib.sha256(path.encode()).hexdigest()[:8]
    return f"{PIPELINE_NAME}-{slug[:32] or 'root'}-{digest}"


def _pipeline_name(name: str) -> str:
    name = str(name).strip()
    if not name or len(name) > _MAX_PIPELINE_NAME or not re.fullmatch(r"[A-Za-z0-9_.-]+",
                                                                         name):
        raise UserError(f"pipeline_name must be 1 to {_MAX_PIPELINE_NAME} letters, digits, "
                        f"'_', '.' or '-', got {name!r}")
    return name


def metadata_target(output_dir: str, metadata_uri: str | None = None,
                    pipeline_name: str | None = None) -> tuple[str, str | None]:
    """(source, scope) of a reader of an output directory's runs (`inspect`, `report`),
    checked as from_options checks a run's: with a metadata_uri, the URI and the
    pipeline (given, else shared_pipeline_name(output_dir)); otherwise OUT/metadata.sqlite,
    scoped only to a pipeline_name that is given."""
    if metadata_uri and str(metadata_uri).strip():
        uri = str(metadata_uri).strip()
        parse_metadata_uri(uri)
        return uri, (_pipeline_name(pipeline_name) if pipeline_name
                     else shared_pipeline_name(output_dir))
    return (os.path.join(os.path.abspath(os.path.expanduser(str(output_dir))),
                         "metadata.sqlite"),
            _pipeline_name(pipeline_name) if pipeline_name else None)


# ------------------------------------------------------------------------ from options
# Option names a front end may give, besides PipelineConfig's fields: hyperparameters of
# trainer.model.HParams by their own name (`epochs`, `batch_size`, ...) go into `hparams`.
HPARAM_SHORTCUTS = ("epochs", "batch_size", "learning_rate", "embedding_dim", "optimizer",
                     "index")
_FIELDS = {f.name: f for f in dataclasses.fields(PipelineConfig)}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def parse_hparam_items(items: Sequence[str]) -> dict:
    """{key: value} of KEY=VALUE strings (`--hparam`); JSON values ([..], {..}, "..")
    are decoded, the rest stay strings (from_options casts them)."""
    import json

    values = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--hparam expects KEY=VALUE, got {item!r}")
        try:
            values[key.strip()] = json.loads(value) if value[:1] in "[{\"" else value
        except ValueError as e:
            raise UserError(f"--hparam {key.strip()}: not valid JSON: {value!r}") from e
    return values


def _cast(name: str, value, kind: type):
    """`value` (maybe a string from a command line or the environment) as `kind`."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise UserError(f"{name} must be true or false, got {value!r}")
    if isinstance(value, bool) and kind in (int, float):
        raise UserError(f"{name} must be a number, got {value!r}")
    if kind in (int, float):
        try:
            number = float(value) if kind is float else (
                value if isinstance(value, int) else int(str(value).strip()))
        except (TypeError, ValueError):
            raise UserError(f"{name} must be {'an integer' if kind is int else 'a number'}, "
                            f"got {value!r}") from None
        if kind is float and number != number:
            raise UserError(f"{name} must be a number, got {value!r}")
        return number
    return str(value)


def _hparams(values: Mapping) -> dict:
    """Hyperparameter overrides, each cast to its HParams field's type and checked by
    HParams.from_dict (unknown names and bad values fail here, before the pipeline)."""
    from trainer.model import HParams

    defaults = HParams()
    out = {}
    if "timestamp_buckets" in values:
        raise UserError("timestamp_buckets is not a hyperparameter but Transform's setting "
                        "of that name (movierec run --timestamp-buckets N)")
    for key, value in values.items():
        if not isinstance(key, str) or not hasattr(defaults, key):
            out[key] = value  # from_dict names it
            continue
        current = getattr(defaults, key)
        if isinstance(current, (bool, int, float)) and (
                isinstance(value, str) or type(value) is not type(current)):
            value = _cast(f"hparam {key}", value, type(current))
        out[key] = value
    try:
        HParams.from_dict(out)
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from e
    return out


def _beam_args(value) -> tuple:
    if isinstance(value, str):
        return tuple(value.split())
    return tuple(str(v) for v in value or ())


def from_options(options: Mapping[str, Any], local_data: bool = False) -> PipelineConfig:
    """The PipelineConfig of a front end's options; raises UserError (one line) on any bad
    or unknown option.

    Keys: PipelineConfig's field names (data_dir and output_dir required), values typed or
    as strings ("3", "true"); `hparams` a mapping (values may be strings, cast to the
    HParams field's type); HParams names such as `epochs` as shortcuts into hparams;
    `beam_pipeline_args` a space-separated string or a list; `metadata_uri` a
    METADATA_URI_FORM (empty: SQLite in output_dir), which, unless `pipeline_name` is
    given, names the pipeline after output_dir (shared_pipeline_name). Paths are made absolute;
    the layout is detected from data_dir's files when data_dir is a local directory
    (and must match `layout` when both are given), else taken from `layout` or from the
    directory's name (a cluster path such as /gcs/bucket/ml-100k). `local_data`: data_dir
    must be a directory here (a local run), not a path as another machine sees it."""
    from components.movielens_example_gen import movielens, splits

    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(_FIELDS) - set(HPARAM_SHORTCUTS))
    if unknown:
        raise UserError(f"unknown setting {unknown[0]!r}")
    values: dict[str, Any] = {}
    hparams = dict(given.pop("hparams", None) or {})
    if not isinstance(hparams, Mapping) and not isinstance(hparams, dict):
        raise UserError(f"hparams must be a mapping of names to values, got {hparams!r}")
    for key in HPARAM_SHORTCUTS:
        if key in given:
            hparams[key] = given.pop(key)
    values["hparams"] = _hparams(hparams)
    for key in ("data_dir", "output_dir"):
        if not str(given.get(key, "")).strip():
            raise UserError(f"{key} is required")
    for name, value in given.items():
        field = _FIELDS[name]
        kind = {"str": str, "int": int, "float": float, "bool": bool}.get(
            str(field.type).split(" |")[0])
        if name == "beam_pipeline_args":
            values[name] = _beam_args(value)
        elif kind is not None:
            values[name] = _cast(name, value, kind)
        else:
            values[name] = value
    try:
        splits.ratings_sources(values.get("split", splits.DEFAULT))
    except ValueError as e:
        raise UserError(str(e)) from e
    for name in ("seed", "beam_workers", "tune_trials"):
        if values.get(name, 0) < 0:
            raise UserError(f"{name} must be 0 or more, got {values[name]}")
    if values.get("timestamp_buckets") is not None and values["timestamp_buckets"] < 2:
        raise UserError(f"timestamp_buckets must be at least 2, got "
                        f"{values['timestamp_buckets']}")
    if "rmse_upper_bound" in values and not values["rmse_upper_bound"] > 0:
        raise UserError(f"rmse_upper_bound must be positive, got "
                        f"{values['rmse_upper_bound']}")
    if "eval_fraction" in values and not 0 < values["eval_fraction"] < 1:
        raise UserError(f"eval_fraction must be between 0 and 1, got "
                        f"{values['eval_fraction']}")
    if storage.is_uri(values["output_dir"]):
        raise UserError(f"output_dir must be a local directory (it holds the run's lock and "
                        f"logs), not {values['output_dir']!r}")
    values["output_dir"] = os.path.abspath(os.path.expanduser(values["output_dir"]))
    if "pipeline_name" in values:
        values["pipeline_name"] = _pipeline_name(values["pipeline_name"])
    if str(values.get("metadata_uri", "")).strip():
        values["metadata_uri"] = str(values["metadata_uri"]).strip()
        parse_metadata_uri(values["metadata_uri"])
        if "pipeline_name" not in values:  # one pipeline per output directory
            values["pipeline_name"] = shared_pipeline_name(values["output_dir"])
    else:
        values.pop("metadata_uri", None)
    for name in ("pipeline_root_override", "serving_dir_override"):
        if str(values.get(name, "")).strip():
            values[name] = _storage_location(name.removesuffix("_override"), values[name])
    data_dir = str(values["data_dir"]).strip()
    if storage.is_uri(data_dir):
        data_dir = _storage_location("data_dir", data_dir)
        # an object store is asked only by a run from here (not by an export for a
        # cluster, whose credentials may be elsewhere)
        try:
            readable = local_data and storage.isdir(data_dir)
        except OSError as e:  # the store cannot be reached (endpoint, credentials)
            raise UserError(f"data directory {data_dir}: {e}") from None
    else:
        data_dir = os.path.expanduser(data_dir.rstrip("/") or "/")
        readable = os.path.isdir(data_dir)
    if local_data and not readable:
        raise UserError(f"data directory does not exist: {data_dir}")
    values["layout"] = _layout(data_dir, values.get("layout", ""), movielens, readable)
    values["data_dir"] = storage.absolute(data_dir) if readable else data_dir
    config = PipelineConfig(**values)
    storage.register(config.data_dir, config.pipeline_root, config.serving_dir)
    return config


def _storage_location(name: str, value: str) -> str:
    """A --pipeline-root / --serving-dir / --data-dir value: a local path (made absolute)
    or an object-store URI (gs://BUCKET/..., s3://BUCKET/...)."""
    value = str(value).strip()
    if not storage.is_uri(value):
        return storage.absolute(value)
    kind = storage.scheme(value)
    bucket = value.split("://", 1)[1].split("/", 1)[0]
    if kind not in storage.OBJECT_STORE_SCHEMES:
        raise UserError(f"{name} {value!r}: {kind}:// is not an object store this "
                        f"pipeline writes to (gs://, s3:// or a local path)")
    if len(bucket) < 3:
        raise UserError(f"{name} {value!r}: needs a bucket name of 3 or more characters "
                        f"({kind}://BUCKET/PATH)")
    return storage.absolute(value)


def _layout(data_dir: str, layout: str, movielens, readable: bool) -> str:
    """The layout of data_dir: detected from its files when it is a directory this process
    reads (`readable`)."""
    def named(name, what):
        try:
            return movielens._layout(name, data_dir)
        except movielens.DataError as e:
            raise UserError(f"{what}: {e}") from e

    given = named(layout, "layout") if layout else None
    if readable:
        try:
            detected = movielens.detect_layout(data_dir)
        except movielens.DataError as e:
            raise UserError(str(e)) from e
        if given and given != detected:
            raise UserError(f"layout {layout} does not match the files in {data_dir} "
                            f"({detected})")
        return detected
    if given:
        return given
    name = posixpath.basename(data_dir)
    if name in movielens.DATASETS or name in movielens.LAYOUTS:
        return named(name, "data_dir")
    if storage.is_uri(data_dir):
        raise UserError(f"layout is required: data_dir {data_dir} is not read from here "
                        f"and its name is not a MovieLens dataset's")
    # a local path that is not there, or a cluster path without a layout in its name
    if os.path.isabs(data_dir) and not os.path.exists(os.path.dirname(data_dir) or "/"):
        raise UserError(f"layout is required: data_dir {data_dir} is not a local "
                        f"directory and its name is not a MovieLens dataset's")
    try:
        return movielens.detect_layout(data_dir)  # "data directory does not exist: ..."
    except movielens.DataError as e:
        raise UserError(str(e)) from e

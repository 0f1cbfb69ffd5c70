"""`movierec report` (wired into pipeline/cli.py): one self-contained HTML page about an
output directory, read from ML Metadata and the artifacts it points at.

Sections: data statistics of the latest StatisticsGen artifact, training curves of the
latest Trainer run, eval metrics of every run, the blessing decision of the latest
evaluated run, and the lineage of the pushed model. Plots are PNGs embedded as data: URIs,
so the page is one file that can be mailed or archived; it holds no script and loads
nothing from elsewhere. A piece that does not exist yet (no run got that far, nothing was
pushed) reads "none yet" instead of failing the report.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
import os

from trainer import storage

NONE_YET = "none yet"
_SECTIONS = (("data", "Data statistics"), ("training", "Training"),
             ("metrics", "Eval metrics per run"), ("blessing", "Blessing"),
             ("lineage", "Lineage of the pushed model"))
# Artifact properties that say nothing about this artifact in particular.
_NOISE_PROPERTIES = ("tfx_version", "is_external", "stats_dashboard_link")
_COLORS = ("#38a", "#d95", "#c66", "#6a6", "#999")


def add_commands(sub) -> None:
    """Adds `report` to the `movierec` argument parser."""
    report = sub.add_parser(
        "report", help="write one self-contained HTML page: data statistics, training "
        "curves, eval metrics per run, blessing, lineage of the pushed model",
        description="Reads the metadata store of an output directory and writes one HTML "
        "file (plots embedded) about the latest statistics, the latest training run, the "
        "eval metrics of every run, the latest blessing decision and the lineage of the "
        "pushed model.")
    report.add_argument("--output-dir", default="output",
                        help="the pipeline's output directory (default: output)")
    from pipeline import options

    options.add_metadata_arguments(report, reader=True)
    report.add_argument("--output", help="the HTML file to write (default: "
                        "OUTPUT_DIR/report.html)")
    report.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from pipeline import metadata, options
    from pipeline.errors import UserError

    source, pipeline_name = options.metadata_target(args)
    # MetadataError (one line) when there is none or its server cannot be reached
    store = metadata.connect_reader(source, pipeline_name)
    shown = (metadata.describe(source) if metadata.is_uri(source)
             else os.path.abspath(source))
    if pipeline_name:
        shown += f", pipeline {pipeline_name}"
    page = render(collect(store), source=shown)
    path = args.output or os.path.join(args.output_dir, "report.html")
    try:
        write_atomically(path, page)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}") from e
    print(f"report: {path}", flush=True)
    return 0


def write_atomically(path: str, text: str) -> None:
    """Writes `path` so that a reader never sees half a page."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ------------------------------------------------------------------------------ collect
def collect(store) -> dict:
    """Everything the page shows, as plain values (None where there is none yet)."""
    return {"statistics": latest_statistics(store), "training": latest_training(store),
            "runs": all_run_metrics(store), "blessing": latest_blessing(store),
            "lineage": pushed_lineage(store),
            "generated": datetime.datetime.now(datetime.timezone.utc).strftime(
                "%Y-%m-%d %H:%M:%S UTC")}


def _iso(millis: int) -> str:
    return datetime.datetime.fromtimestamp(millis / 1000, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S UTC")


def _latest_artifact(store, type_name: str):
    """The newest artifact of a type that was published (not pending or abandoned)."""
    from ml_metadata.proto import metadata_store_pb2

    usable = (metadata_store_pb2.Artifact.LIVE, metadata_store_pb2.Artifact.UNKNOWN)
    found = [a for a in store.get_artifacts_by_type(type_name) if a.state in usable]
    return max(found, key=lambda a: a.id) if found else None


def latest_statistics(store) -> dict | None:
    """{"id", "uri", "created", "splits": {split: DatasetFeatureStatistics}, "error"}."""
    from google.protobuf.message import DecodeError
    from tensorflow_metadata.proto.v0 import statistics_pb2

    artifact = _latest_artifact(store, "ExampleStatistics")
    if artifact is None:
        return None
    out = {"id": artifact.id, "uri": artifact.uri,
           "created": _iso(artifact.create_time_since_epoch), "splits": {}, "error": None}
    names = []
    for props in (artifact.properties, artifact.custom_properties):
        if "split_names" in props and props["split_names"].string_value:
            try:
                names = json.loads(props["split_names"].string_value)
            except ValueError:
                pass
    if not names and storage.isdir(artifact.uri):
        names = sorted(d[len("Split-"):] for d in storage.listdir(artifact.uri)
                       if d.startswith("Split-"))
    for split in names:
        path = storage.join(artifact.uri, f"Split-{split}", "FeatureStats.pb")
        stats = statistics_pb2.DatasetFeatureStatisticsList()
        try:
            with storage.open(path, "rb") as f:
                stats.ParseFromString(f.read())
        except (OSError, DecodeError) as e:
            out["error"] = f"cannot read {path}: {e}"
            continue
        if stats.datasets:
            out["splits"][split] = stats.datasets[0]
    return out


def latest_training(store) -> dict | None:
    """{"id", "uri", "created", "summary" (training.json) or None, "error"}."""
    artifact = _latest_artifact(store, "ModelRun")
    if artifact is None:
        return None
    path = storage.join(artifact.uri, "training.json")
    out = {"id": artifact.id, "uri": artifact.uri,
           "created": _iso(artifact.create_time_since_epoch), "summary": None, "error": None}
    try:
        with storage.open(path) as f:
            out["summary"] = json.load(f)
    except (OSError, ValueError) as e:
        out["error"] = f"cannot read {path}: {e}"
    return out


def all_run_metrics(store) -> list:
    """run_metrics of every pipeline run, oldest first, with the run's start time."""
    from pipeline import metadata

    rows = []
    for context in metadata.runs(store):
        row = metadata.run_metrics(store, context)
        row["started"] = _iso(context.create_time_since_epoch)
        rows.append(row)
    return rows


def latest_blessing(store) -> dict | None:
    """The final blessing of the latest run that got as far as an evaluation."""
    from pipeline import metadata

    try:
        context = metadata.find_run(store, evaluated=True)
    except metadata.MetadataError:
        return None
    result = metadata.run_metrics(store, context)
    if result.get("blessed") is None:
        return None
    blessings = metadata.run_artifacts(store, context, "ModelBlessing")
    final = [b for b in blessings if metadata.custom(b, "reason") is not None] or blessings
    return {"run_id": result["run_id"], "blessed": result["blessed"],
            "reason": result.get("blessing_reason"), "model": result.get("model"),
            "baseline_model": metadata.custom(final[-1], "baseline_model"),
            "pushed_model": result.get("pushed_model"),
            "rmse": result.get("rmse"), "top_100_accuracy": result.get("top_100_accuracy")}


def pushed_lineage(store) -> dict | None:
    """{"pushed": destination, "version", "rows": metadata.lineage rows} or None."""
    from pipeline import metadata

    pushed = metadata.latest_pushed(store)
    if pushed is None:
        return None
    return {"pushed": metadata.custom(pushed, "pushed_destination"),
            "version": metadata.custom(pushed, "pushed_version"),
            "created": _iso(pushed.create_time_since_epoch),
            "rows": metadata.lineage(store, pushed.id)}


# ------------------------------------------------------------------------------- render
def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _none_yet(what: str) -> str:
    return f'<p class="none">{esc(what)}: {NONE_YET}</p>'


def _table(header, rows, cls: str = "") -> str:
    """An HTML table; header and cells are plain text (escaped here) unless they are
    _Html instances."""
    def cell(tag, value):
        text = value if isinstance(value, _Html) else esc(value)
        return f"<{tag}>{text}</{tag}>"

    head = "".join(cell("th", h) for h in header)
    body = "".join("<tr>" + "".join(cell("td", v) for v in row) + "</tr>" for row in rows)
    return (f'<table class="{esc(cls)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")


class _Html(str):
    """Markup built here from escaped parts: _table puts it in as it is."""


def _img(png_b64: str, alt: str) -> str:
    return f'<img src="data:image/png;base64,{png_b64}" alt="{esc(alt)}">'


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def render(data: dict, source: str = "") -> str:
    sections = {"data": render_statistics(data.get("statistics")),
                "training": render_training(data.get("training")),
                "metrics": render_runs(data.get("runs") or []),
                "blessing": render_blessing(data.get("blessing")),
                "lineage": render_lineage(data.get("lineage"))}
    nav = " · ".join(f'<a href="#{key}">{esc(title)}</a>' for key, title in _SECTIONS)
    body = "\n".join(f'<section id="{key}"><h2>{esc(title)}</h2>\n{sections[key]}</section>'
                     for key, title in _SECTIONS)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>movierec report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }}
h1 {{ margin-bottom: 0.2em; }}
h2 {{ border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }}
table {{ border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left;
          vertical-align: top; }}
th {{ background: #f3f3f3; }}
td.num, table.numeric td {{ font-variant-numeric: tabular-nums; }}
img {{ max-width: 100%; display: block; margin: 0.6em 0; }}
.meta, .none {{ color: #666; }}
.none {{ font-style: italic; }}
.blessed {{ color: #262; font-weight: bold; }}
.not-blessed, .error {{ color: #a22; font-weight: bold; }}
code, .uri {{ font-family: ui-monospace, monospace; font-size: 0.85em; word-break: break-all; }}
.props {{ font-size: 0.85em; color: #444; }}
.repeat {{ color: #888; }}
table.lineage {{ width: 100%; }}
table.lineage td:first-child {{ white-space: nowrap; }}
table.lineage td:last-child {{ overflow-wrap: anywhere; }}
</style>
</head>
<body>
<h1>movierec report</h1>
<p class="meta">metadata: <code>{esc(source)}</code> · generated {esc(data.get("generated"))}</p>
<nav>{nav}</nav>
{body}
</body>
</html>
"""


# --- (1) data statistics
def _feature_name(feature) -> str:
    return ".".join(feature.path.step) if feature.path.step else feature.name


def _feature_stats(feature) -> tuple:
    """(count, missing, "unique / mean" text) of one FeatureNameStatistics."""
    kind = feature.WhichOneof("stats")
    stats = getattr(feature, kind) if kind else None
    common = (stats.common_stats if kind in ("num_stats", "string_stats", "bytes_stats",
                                            "struct_stats") else None)
    count = int(common.num_non_missing) if common else None
    missing = int(common.num_missing) if common else None
    if kind == "num_stats":
        summary = (f"mean {stats.mean:.4g} (std {stats.std_dev:.3g}, "
                   f"min {stats.min:.4g}, max {stats.max:.4g})")
    elif kind in ("string_stats", "bytes_stats"):
        summary = f"{stats.unique} unique"
        if kind == "string_stats" and stats.top_values:
            summary += f" (top: {stats.top_values[0].value})"
    else:
        summary = "–"
    if common and common.max_num_values > 1:
        summary += f"; {common.avg_num_values:.2f} values per example"
    return count, missing, summary


def render_statistics(stats: dict | None) -> str:
    if stats is None:
        return _none_yet("statistics (no StatisticsGen artifact)")
    from tensorflow_metadata.proto.v0 import statistics_pb2

    parts = [f'<p class="meta">StatisticsGen artifact #{stats["id"]}, {esc(stats["created"])}:'
             f' <span class="uri">{esc(stats["uri"])}</span></p>']
    if stats.get("error"):
        parts.append(f'<p class="error">{esc(stats["error"])}</p>')
    splits = stats["splits"]
    if not splits:
        return "\n".join(parts + [_none_yet("split statistics")])
    parts.append(_table(["split", "examples"],
                        [[s, int(d.num_examples)] for s, d in splits.items()], "numeric"))
    plots = _statistics_plots(splits)
    if plots:
        parts.append(_img(plots, "examples per split and rating distribution"))
    names = []
    for dataset in splits.values():
        for feature in dataset.features:
            if _feature_name(feature) not in names:
                names.append(_feature_name(feature))
    header = ["feature", "type"]
    for split in splits:
        header += [f"{split}: count", f"{split}: missing", f"{split}: unique / mean"]
    rows = []
    for name in names:
        row, kind = [name], None
        for dataset in splits.values():
            feature = next((f for f in dataset.features if _feature_name(f) == name), None)
            if feature is None:
                row += ["–", "–", "–"]
                continue
            kind = kind or statistics_pb2.FeatureNameStatistics.Type.Name(feature.type)
            row += list(_feature_stats(feature))
        rows.append([row[0], kind or "–", *row[1:]])
    parts.append(_table(header, rows, "numeric features"))
    return "\n".join(parts)


def _statistics_plots(splits: dict) -> str | None:
    from trainer import features as F

    plt = _pyplot()
    ratings = {}
    for split, dataset in splits.items():
        feature = next((f for f in dataset.features if _feature_name(f) == F.RATING), None)
        if feature is not None and feature.WhichOneof("stats") == "num_stats":
            standard = [h for h in feature.num_stats.histograms
                        if h.type == h.STANDARD and h.buckets]
            if standard:
                ratings[split] = standard[0].buckets
    fig, axes = plt.subplots(1, 2 if ratings else 1, figsize=(11 if ratings else 5.5, 3.6),
                             squeeze=False)
    axes = axes[0]
    names = list(splits)
    bars = axes[0].bar(range(len(names)), [splits[s].num_examples for s in names],
                       color=[_COLORS[i % len(_COLORS)] for i in range(len(names))])
    axes[0].set_xticks(range(len(names)), names)
    axes[0].bar_label(bars, fontsize=8)
    axes[0].set_title("examples per split", fontsize=10)
    if ratings:
        for i, (split, buckets) in enumerate(ratings.items()):
            total = sum(b.sample_count for b in buckets) or 1.0
            edges = [buckets[0].low_value] + [b.high_value for b in buckets]
            axes[1].stairs([b.sample_count / total for b in buckets], edges,
                           label=split, color=_COLORS[i % len(_COLORS)], linewidth=1.5,
                           fill=i == 0, alpha=0.6 if i == 0 else 1.0)
        axes[1].set_title(f"{F.RATING} distribution (share of examples per bucket)",
                          fontsize=10)
        axes[1].set_xlabel(F.RATING)
        axes[1].legend(fontsize=8)
    return _png(fig)


# --- (2) training curves
def _curves(history: dict) -> dict:
    """{name: {"train": values, "validation": values}} of the series worth plotting:
    all-zero series and duplicates of another series (total_loss == loss) left out."""
    curves, seen = {}, []
    for key, values in history.items():
        if key.startswith("val_") or not values or not any(values):
            continue
        if any(values == other for other in seen):
            continue
        seen.append(values)
        curves[key] = {"train": values, "validation": history.get(f"val_{key}") or []}
    return curves


def render_training(training: dict | None) -> str:
    if training is None:
        return _none_yet("training run (no Trainer ModelRun artifact)")
    parts = [f'<p class="meta">Trainer run artifact #{training["id"]}, '
             f'{esc(training["created"])}: <span class="uri">{esc(training["uri"])}</span></p>']
    summary = training.get("summary")
    if summary is None:
        parts.append(f'<p class="error">{esc(training.get("error"))}</p>'
                     if training.get("error") else _none_yet("training.json"))
        return "\n".join(parts)
    facts = [[key, summary[key]] for key in ("train_examples", "validation_examples",
                                             "catalog_size", "seconds") if key in summary]
    if facts:
        parts.append(_table(["training run", "value"], facts, "numeric"))
    curves = _curves(summary.get("history") or {})
    if curves:
        parts.append(_img(_training_plot(curves), "training curves per epoch"))
        epochs = max(len(c["train"]) for c in curves.values())
        parts.append(_table(["metric", "epoch 1", f"epoch {epochs} (last)", "validation (last)"],
                            [[name, _fmt(c["train"][0]), _fmt(c["train"][-1]),
                              _fmt(c["validation"][-1]) if c["validation"] else "–"]
                             for name, c in curves.items()], "numeric"))
    else:
        parts.append(_none_yet("training history"))
    hparams = summary.get("hparams") or {}
    if hparams:
        parts.append("<details><summary>hyperparameters</summary>"
                     + _table(["hyperparameter", "value"],
                              [[k, json.dumps(v)] for k, v in sorted(hparams.items())])
                     + "</details>")
    return "\n".join(parts)


def _training_plot(curves: dict) -> str:
    plt = _pyplot()
    columns = min(len(curves), 3)
    rows = math.ceil(len(curves) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.3 * rows),
                             squeeze=False)
    for ax, (name, curve) in zip(axes.flat, curves.items()):
        ax.plot(range(1, len(curve["train"]) + 1), curve["train"], marker="o",
                color=_COLORS[0], label="train")
        if curve["validation"]:
            ax.plot(range(1, len(curve["validation"]) + 1), curve["validation"],
                    marker="x", linestyle="--", color=_COLORS[1], label="validation")
        ax.set_title(f"{name} per epoch", fontsize=10)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(curves):]:
        ax.set_visible(False)
    return _png(fig)


# --- (3) eval metrics of every run
_RUN_METRICS = ("rmse", "mae", "top_10_accuracy", "top_100_accuracy")


def render_runs(runs: list) -> str:
    if not runs:
        return _none_yet("pipeline runs")
    parts = []
    evaluated = [r for r in runs if any(r.get(k) is not None for k in _RUN_METRICS)]
    if evaluated:
        parts.append(_img(_runs_plot(runs), "eval metrics per run"))
    else:
        parts.append(_none_yet("evaluated runs"))
    header = ["#", "run", "started", *_RUN_METRICS, "eval examples", "blessed", "pushed version"]
    rows = [[i, r["run_id"], r.get("started"), *(_fmt(r.get(k)) for k in _RUN_METRICS),
             _fmt(r.get("example_count")), _fmt(r.get("blessed")),
             os.path.basename(r["pushed_model"]) if r.get("pushed_model") else "–"]
            for i, r in enumerate(runs, 1)]
    parts.append(_table(header, rows, "numeric runs"))
    return "\n".join(parts)


def _runs_plot(runs: list) -> str:
    plt = _pyplot()
    x = list(range(1, len(runs) + 1))

    def series(key):
        return [r.get(key) if r.get(key) is not None else float("nan") for r in runs]

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for i, key in enumerate(("rmse", "mae")):
        axes[0].plot(x, series(key), marker="o", color=_COLORS[i], label=key)
    axes[0].set_title("rating error per run (lower is better)", fontsize=10)
    for i, key in enumerate(("top_10_accuracy", "top_100_accuracy")):
        axes[1].plot(x, series(key), marker="o", color=_COLORS[i], label=key)
    axes[1].set_title("retrieval accuracy per run (higher is better)", fontsize=10)
    for ax in axes:
        ax.set_xlabel("run # (see the table)")
        ax.set_xticks(x)
        ax.set_xlim(0.5, len(runs) + 0.5)
        ax.legend(fontsize=8)
    return _png(fig)


# --- (4) blessing
def render_blessing(blessing: dict | None) -> str:
    if blessing is None:
        return _none_yet("blessing decision (no run reached evaluation)")
    verdict = (_Html('<span class="blessed">blessed</span>') if blessing["blessed"]
               else _Html('<span class="not-blessed">not blessed</span>'))
    rows = [["run", blessing["run_id"]], ["decision", verdict],
            ["reason", blessing.get("reason") or "–"],
            ["rmse", _fmt(blessing.get("rmse"))],
            ["top_100_accuracy", _fmt(blessing.get("top_100_accuracy"))],
            ["model", blessing.get("model") or "–"],
            ["compared against", blessing.get("baseline_model") or
             "no blessed model before it"],
            ["pushed", blessing.get("pushed_model") or "not pushed"]]
    return _table(["blessing", "latest evaluated run"], rows)


# --- (5) lineage
def _properties_text(properties: dict) -> str:
    items = []
    for key, value in sorted(properties.items()):
        if key in _NOISE_PROPERTIES:
            continue
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        if len(text) > 160:
            text = text[:157] + "…"
        items.append(f"{key}={text}")
    return "; ".join(items)


def render_lineage(lineage: dict | None) -> str:
    if lineage is None:
        return _none_yet("pushed model")
    rows = lineage["rows"]
    parts = [_table(["pushed model", ""], [
        ["destination", lineage.get("pushed") or "–"],
        ["version", lineage.get("version") or "–"],
        ["pushed at", lineage.get("created") or "–"]])]
    source = next((r for r in rows if "input_dir" in (r.get("properties") or {})), None)
    if source is not None:
        props = source["properties"]
        parts.append(_table(["input data", ""], [
            ["input_dir", props.get("input_dir")],
            ["input_fingerprint", props.get("input_fingerprint", "–")],
            *([["layout", props["layout"]]] if "layout" in props else []),
            ["examples", f'#{source["id"]} {source["uri"]}']]))
    table_rows = []
    for row in rows:
        indent = "&nbsp;" * 4 * int(row.get("depth") or 0)
        key = f'{esc(row["input_key"])} ← ' if row.get("input_key") else ""
        label = _Html(f'{indent}{"↳ " if row.get("depth") else ""}{key}'
                      f'<b>{esc(row["type"])}</b> #{esc(row["id"])}')
        if row.get("repeat"):
            props = '<span class="repeat">listed above</span>'
        else:
            props = (f'<span class="props">'
                     f'{esc(_properties_text(row.get("properties") or {}))}</span>')
        details = _Html(f'<span class="uri">{esc(row.get("uri"))}</span><br>{props}')
        table_rows.append([label, row.get("producer") or "–", row.get("run") or "–",
                           details])
    parts.append(_table(["artifact (input key ← type #id)", "produced by", "run",
                         "uri and properties"], table_rows, "lineage"))
    return "\n".join(parts)

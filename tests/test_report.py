"""`movierec report` on a real pipeline run (LocalDagRunner on tiny MovieLens-shaped data):
the HTML file's content against the metadata store and artifacts, then the page as headless
Chromium renders it."""

import base64
import collections
import html.parser
import io
import json
import os
import shutil
import subprocess

import pytest
from PIL import Image

from components.movielens_example_gen import synth
from pipeline import cli, metadata, report

FAST = ["--epochs", "3", "--batch-size", "256", "--rmse-upper-bound", "2.0"]
SECTIONS = ["data", "training", "metrics", "blessing", "lineage"]


# ------------------------------------------------------------------------------- helpers
class Page(html.parser.HTMLParser):
    """What a report holds: images, links, scripts, tables (rows of cell text) and the
    text of each section."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags = collections.Counter()
        self.images, self.urls, self.tables = [], [], []
        self.section_text = collections.defaultdict(str)
        self._section, self._cell = None, None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags[tag] += 1
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for key in ("src", "href"):
            if key in attrs:
                self.urls.append(attrs[key])
        if tag == "section":
            self._section = attrs.get("id")
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "section":
            self._section = None

    def handle_data(self, data):
        if self._section:
            self.section_text[self._section] += data
        if self._cell is not None:
            self._cell.append(data)

    def table(self, first_header: str) -> list:
        """The rows (dicts by header) of the table whose first header cell is given."""
        for rows in self.tables:
            if rows and rows[0] and rows[0][0] == first_header:
                return [dict(zip(rows[0], row)) for row in rows[1:]]
        raise AssertionError(f"no table headed {first_header!r}; tables: "
                             f"{[rows[0] for rows in self.tables if rows]}")

    def pairs(self, first_header: str) -> dict:
        """A two-column table as {first cell: second cell}."""
        return {row[first_header]: list(row.values())[1] for row in self.table(first_header)}


def ink(image: Image.Image) -> float:
    """Share of pixels that are not (near) white."""
    histogram = image.convert("L").histogram()
    return 1 - sum(histogram[200:]) / sum(histogram)


def report_page(capsys, *args) -> tuple:
    capsys.readouterr()
    rc = cli.main(["report", *args])
    captured = capsys.readouterr()
    return rc, captured


def _chromium():
    """The chromium binary, or skip (fail where MOVIEREC_REQUIRE_CHROMIUM=1, as in CI)."""
    found = ("/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK)
             else shutil.which("chromium"))
    if found:
        return found
    reason = "chromium not found (neither /usr/bin/chromium nor `chromium` on PATH)"
    if os.environ.get("MOVIEREC_REQUIRE_CHROMIUM") == "1":
        pytest.fail(reason + " and MOVIEREC_REQUIRE_CHROMIUM=1")
    pytest.skip(reason + "; set MOVIEREC_REQUIRE_CHROMIUM=1 to make this a failure")


def chromium(tmp_path, *args) -> subprocess.CompletedProcess:
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.iterdir()))}"
    profile.mkdir()
    return subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120)


# Appended to a copy of the report: once the page has loaded, records how many images
# decoded and the share of non-white pixels of each, as Chromium drew them.
PROBE = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var inked = images.map(function (img) {
    var canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    if (!canvas.width || !canvas.height) return 0;
    var ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0);
    var px = ctx.getImageData(0, 0, canvas.width, canvas.height).data, n = 0;
    for (var i = 0; i < px.length; i += 4)
      if (px[i] < 200 || px[i + 1] < 200 || px[i + 2] < 200) n++;
    return n / (canvas.width * canvas.height);
  });
  document.body.setAttribute("data-probe", JSON.stringify({
    images: images.length,
    loaded: images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
    inked: inked,
    headings: Array.prototype.map.call(document.querySelectorAll("section h2"),
                                       function (h) { return h.textContent; })}));
});
</script>"""


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def output_dir(default_run):
    return default_run


@pytest.fixture(scope="module")
def report_html(output_dir):
    assert cli.main(["report", "--output-dir", str(output_dir)]) == 0
    path = output_dir / "report.html"
    assert path.is_file()
    return path


@pytest.fixture(scope="module")
def page(report_html):
    return Page(report_html.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------- tests
def test_report_is_one_self_contained_page(page):
    assert [h for h in SECTIONS if h in page.section_text] == SECTIONS
    assert report.NONE_YET not in " ".join(page.section_text.values())
    assert page.tags["script"] == 0 and page.tags["link"] == 0 and page.tags["iframe"] == 0
    # every image is an embedded PNG; every link stays in the page
    assert all(u.startswith("data:image/png;base64,") or u.startswith("#")
               for u in page.urls), page.urls
    assert len(page.images) == 3  # statistics, training curves, metrics per run
    for src in page.images:
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert image.format == "PNG" and image.width >= 400 and image.height >= 200
        assert 0.005 < ink(image) < 0.9  # something drawn, not a blank or solid canvas


def test_data_statistics_match_statistics_gen(page, output_dir):
    import tensorflow_data_validation as tfdv

    store = metadata.connect(str(output_dir))
    [artifact] = store.get_artifacts_by_type("ExampleStatistics")
    splits = {}
    for split in ("train", "eval"):
        stats = tfdv.load_stats_binary(
            os.path.join(artifact.uri, f"Split-{split}", "FeatureStats.pb"))
        splits[split] = stats.datasets[0]
    assert page.pairs("split") == {s: str(d.num_examples) for s, d in splits.items()}
    features = {row["feature"]: row for row in page.table("feature")}
    # a time split's eval examples also carry the request context (history_*)
    assert set(features) == {f.path.step[0] for d in splits.values() for f in d.features}
    for split, dataset in splits.items():
        for feature in dataset.features:
            row = features[feature.path.step[0]]
            kind = feature.WhichOneof("stats")
            common = getattr(feature, kind).common_stats
            assert row[f"{split}: count"] == str(common.num_non_missing)
            assert row[f"{split}: missing"] == str(common.num_missing)
            if kind == "string_stats":
                assert row[f"{split}: unique / mean"].startswith(
                    f"{feature.string_stats.unique} unique")
    [rating] = [f for f in splits["train"].features if f.path.step[0] == "rating"]
    assert features["rating"]["type"] == "FLOAT"
    assert features["rating"]["train: unique / mean"].startswith(
        f"mean {rating.num_stats.mean:.4g} ")


def test_training_curves_come_from_the_trainer_run(page, output_dir):
    store = metadata.connect(str(output_dir))
    [model_run] = store.get_artifacts_by_type("ModelRun")
    with open(os.path.join(model_run.uri, "training.json")) as f:
        summary = json.load(f)
    assert model_run.uri in page.section_text["training"]
    rows = {row["metric"]: row for row in page.table("metric")}
    history = summary["history"]
    assert {"loss", "retrieval_loss", "rmse"} <= set(rows)
    for name, values in history.items():  # an all-zero curve is not plotted
        assert (name in rows) == any(v != 0 for v in values), name
    for name, row in rows.items():
        assert row["epoch 1"] == f"{history[name][0]:.4f}"
        assert row["epoch 3 (last)"] == f"{history[name][-1]:.4f}"
    assert page.pairs("training run")["train_examples"] == str(summary["train_examples"])


def test_metrics_blessing_and_lineage_match_metadata(page, output_dir, ml100k_dir):
    store = metadata.connect(str(output_dir))
    [run] = metadata.runs(store)
    metrics = metadata.run_metrics(store, run)
    version = os.path.basename(metrics["pushed_model"])

    [row] = page.table("#")
    assert row["run"] == run.name
    for key in ("rmse", "mae", "top_10_accuracy", "top_100_accuracy"):
        assert row[key] == f"{metrics[key]:.4f}"
    assert (row["blessed"], row["pushed version"]) == ("yes", version)

    blessing = page.pairs("blessing")
    assert blessing["run"] == run.name and blessing["decision"] == "blessed"
    assert blessing["reason"] == metrics["blessing_reason"]

    assert page.pairs("pushed model")["destination"] == metrics["pushed_model"]
    [examples] = store.get_artifacts_by_type("Examples")
    source = page.pairs("input data")
    assert source["input_dir"] == str(ml100k_dir)
    assert source["input_fingerprint"] == metadata.custom(examples, "input_fingerprint")
    lineage = page.table("artifact (input key ← type #id)")
    first = lineage[0]
    assert first["artifact (input key ← type #id)"].startswith("PushedModel")
    assert first["produced by"] == "Pusher" and first["run"] == run.name
    kinds = " ".join(r["artifact (input key ← type #id)"] for r in lineage)
    for kind in ("model ← Model", "transform_graph ← TransformGraph", "Examples",
                 "ModelBlessing", "ExampleStatistics", "Schema"):
        assert kind in kinds


def test_chromium_renders_the_report_with_its_plots(report_html, page, tmp_path):
    probe = tmp_path / "probe.html"
    probe.write_text(report_html.read_text(encoding="utf-8").replace(
        "</body>", PROBE + "</body>"), encoding="utf-8")
    result = chromium(tmp_path, "--dump-dom", probe.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    dom = Page(result.stdout)
    marker = 'data-probe="'
    assert marker in result.stdout, "the probe did not run: " + result.stdout[:500]
    found = result.stdout.split(marker, 1)[1].split('"', 1)[0]
    state = json.loads(html.unescape(found))
    assert state["images"] == len(page.images) == state["loaded"]
    assert all(share > 0.005 for share in state["inked"]), state["inked"]
    assert len(state["headings"]) == len(SECTIONS)
    assert len(dom.images) == len(page.images)

    # the page as it is (no probe), drawn: not blank
    shot = tmp_path / "report.png"
    result = chromium(tmp_path, "--window-size=1280,2400", f"--screenshot={shot}",
                      report_html.as_uri())
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    image = Image.open(shot)
    assert image.size == (1280, 2400)
    assert ink(image) > 0.03  # text, tables and plots; a blank page is 0
    assert len(image.convert("RGB").getcolors(1 << 20)) > 50  # the plots' colours


def test_report_of_a_run_that_stopped_at_the_schema_gate(tmp_path, synth_data, capsys):
    """Statistics exist, nothing after them: the other sections say "none yet"."""
    data = synth.write_ml100k(tmp_path / "drift", synth_data)
    users = (data / "u.user").read_text().replace("|writer|", "|astronaut|")
    (data / "u.user").write_text(users)
    out = tmp_path / "output"
    assert cli.main(["run", "--data-dir", str(data), "--output-dir", str(out), *FAST]) != 0
    target = tmp_path / "elsewhere" / "partial.html"
    rc, captured = report_page(capsys, "--output-dir", str(out), "--output", str(target))
    assert rc == 0, captured.err
    assert str(target) in captured.out and not (out / "report.html").exists()
    page = Page(target.read_text(encoding="utf-8"))
    assert report.NONE_YET not in page.section_text["data"]
    assert "user_occupation" in {row["feature"] for row in page.table("feature")}
    for section in ("training", "blessing", "lineage"):
        assert report.NONE_YET in page.section_text[section], section
    [row] = page.table("#")  # the failed run is listed, without metrics
    assert row["rmse"] == "–" and row["blessed"] == "–"
    assert len(page.images) == 1  # the statistics plot only


def test_report_of_an_empty_store_and_of_none(tmp_path, capsys):
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    rc, captured = report_page(capsys, "--output-dir", str(tmp_path / "nothing"))
    assert rc == 2 and captured.out == ""
    assert captured.err.startswith("movierec: error: no metadata store at")
    assert len(captured.err.strip().splitlines()) == 1

    config = metadata_store_pb2.ConnectionConfig()  # a store as a new pipeline creates it
    config.sqlite.filename_uri = str(tmp_path / "metadata.sqlite")
    config.sqlite.connection_mode = (
        metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE)
    metadata_store.MetadataStore(config)
    rc, captured = report_page(capsys, "--metadata", str(tmp_path / "metadata.sqlite"),
                               "--output", str(tmp_path / "r.html"))
    assert rc == 0, captured.err
    page = Page((tmp_path / "r.html").read_text(encoding="utf-8"))
    for section in SECTIONS:
        assert report.NONE_YET in page.section_text[section], section
    assert page.images == []


def test_text_is_escaped():
    hostile = '<script>alert("x")</script> & <img src=x onerror=alert(1)>'
    data = {
        "statistics": None, "training": None, "generated": hostile,
        "runs": [{"run_id": hostile, "started": hostile, "rmse": 1.0, "blessed": False,
                  "pushed_model": None}],
        "blessing": {"run_id": hostile, "blessed": False, "reason": hostile,
                     "model": hostile},
        "lineage": {"pushed": hostile, "version": hostile, "created": hostile, "rows": [
            {"depth": 0, "id": 1, "type": hostile, "uri": hostile, "producer": hostile,
             "run": hostile, "properties": {hostile: hostile}, "input_key": None},
            {"depth": 1, "id": 2, "type": "Examples", "uri": hostile, "producer": None,
             "run": None, "properties": {"input_dir": hostile,
                                         "input_fingerprint": hostile},
             "input_key": hostile}]}}
    text = report.render(data, source=hostile)
    page = Page(text)
    assert "<script>" not in text and "<img src=x" not in text
    assert page.tags["script"] == 0 and page.tags["img"] == 1  # the metrics plot only
    assert page.pairs("input data")["input_dir"] == " ".join(hostile.split())
    assert page.table("#")[0]["run"] == " ".join(hostile.split())

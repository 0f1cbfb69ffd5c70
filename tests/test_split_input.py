"""ExampleGen reads a ratings file in byte ranges (a splittable DoFn over byte offsets):
every line is read once, by the range it starts in, parsed as the whole-file reader
(movielens.iter_ratings) parses it; two Beam workers share one file; what ExampleGen writes
is what the unsplit read gives; a bad line past the first range is named by its offset."""

import hashlib
import json
import pathlib
import random

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.options.pipeline_options import PipelineOptions
from tfx.types import standard_artifacts

from components.movielens_example_gen import executor, splits, synth
from components.movielens_example_gen import movielens as ml
from pipeline import cli
from trainer import examples as ex
from trainer import features as F

TRAIN, EVAL = F.TRAIN_SPLIT, F.EVAL_SPLIT

# Small ratings files: CRLF and LF, blank lines (one of a latin-1 no-break space), fields
# padded with a latin-1 (b"\xa0") or a utf-8 (b"\xc2\xa0") no-break space, a millisecond
# timestamp, csv quoting and a byte-order mark (ml-latest), no newline after the last line.
SMALL = {
    "ml-100k": ("u.data", b"1\t10\t5\t881250949\n2\t20\t3\t881250950\r\n\n   \n\xa0\n"
                          b"3\t30\t1\t881250951\xa0\n4\t40\t2 \xc2\xa0\t881250952\r\n"
                          b"5\t50\t4\t881250953000\n6\t60\t5\t881250954"),
    "ml-1m": ("ratings.dat", b"1::1193::5::978300760\r\n2::661::3::978302109\r\n\r\n"
                             b"3::914::4::978301968\xa0\r\n4::3408::4::978300275"),
    "ml-latest": ("ratings.csv", b"\xef\xbb\xbfuserId,movieId,rating,timestamp\r\n"
                                 b"1,10,4.0,1445714835\r\n\r\n2,20,0.5,1445714836000\n"
                                 b'"3","30","3.5","1445714837"\n4,40,5.0,1445714838 \xa0\n'
                                 b"\n5,50,2.5,1445714839"),
}


def small_file(tmp_path, layout, copies=3):
    """SMALL[layout] `copies` times (ml-latest: one header), ids made distinct per copy."""
    name, content = SMALL[layout]
    header = b""
    if layout == "ml-latest":
        header, content = content.split(b"\r\n", 1)
        header += b"\r\n"
    body = b"\n".join(content.replace(b"1", str(copy + 1).encode())
                      for copy in range(copies))
    path = tmp_path / layout / name
    path.parent.mkdir(parents=True)
    path.write_bytes(header + body)
    return path


def read_range(path, layout, start, end, references=None):
    """The ratings of bytes [start, end) of `path`, claimed through a restriction tracker as
    ExampleGen's DoFn claims them; the tracker must be done after."""
    tracker = OffsetRestrictionTracker(OffsetRange(start, end))
    with open(path, "rb") as f:
        ratings = list(ml.read_ratings(f, path.name, layout, start, end, tracker.try_claim,
                                       references))
    tracker.check_done()
    return ratings


def offsets(ratings):
    return [r.offset for r in ratings]


@pytest.mark.parametrize("layout", ml.LAYOUTS)
def test_two_ranges_read_every_line_once_at_any_cut(layout, tmp_path):
    path = small_file(tmp_path, layout)
    whole = list(ml.iter_ratings(path.parent, layout))
    size = path.stat().st_size
    assert len(whole) == 3 * {"ml-100k": 6, "ml-1m": 4, "ml-latest": 5}[layout]
    assert [r.line for r in whole][:2] == ([2, 4] if layout == "ml-latest" else [1, 2])
    starts = [0] + [i + 1 for i, byte in enumerate(path.read_bytes()) if byte == ord("\n")]
    assert offsets(whole) == [starts[r.line - 1] for r in whole]
    for cut in range(size + 1):  # inside lines, at line starts, inside a utf-8 character
        first, second = read_range(path, layout, 0, cut), read_range(path, layout, cut, size)
        assert first + second == whole, cut
        assert offsets(first + second) == offsets(whole), cut
        assert [r.line for r in first] == [r.line for r in whole[:len(first)]]
        if cut:  # a range past byte 0 cannot know them
            assert all(r.line == 0 for r in second)
        assert all(r.offset >= cut for r in second) and all(r.offset < cut for r in first)


@pytest.mark.parametrize("layout", ml.LAYOUTS)
def test_any_partition_reads_every_line_once(layout, tmp_path):
    path = small_file(tmp_path, layout)
    whole = list(ml.iter_ratings(path.parent, layout))
    size = path.stat().st_size
    # every byte its own range: mostly empty ranges, and each line read by exactly one
    assert sum((read_range(path, layout, i, i + 1) for i in range(size)), []) == whole
    assert read_range(path, layout, 7, 7) == []  # an empty range claims nothing
    rng = random.Random(0)
    for _ in range(200):
        cuts = [0, *sorted(rng.sample(range(1, size), rng.randint(1, 6))), size]
        parts = [read_range(path, layout, a, b) for a, b in zip(cuts, cuts[1:])]
        assert sum(parts, []) == whole and offsets(sum(parts, [])) == offsets(whole), cuts
    # no end (and no claim): to the end of the file
    with open(path, "rb") as f:
        tail = list(ml.read_ratings(f, path.name, layout, size // 2))
    assert tail == [r for r in whole if r.offset >= size // 2]


@pytest.mark.parametrize("layout", ml.LAYOUTS)
def test_a_range_split_while_it_is_read(layout, tmp_path):
    """A runner may split a range while it is read (dynamic rebalancing): the primary
    stops where the residual starts, and the two read every line once."""
    path = small_file(tmp_path, layout)
    whole = list(ml.iter_ratings(path.parent, layout))
    size = path.stat().st_size
    for after in range(1, len(whole)):
        tracker = OffsetRestrictionTracker(OffsetRange(0, size))
        with open(path, "rb") as f:
            ratings = ml.read_ratings(f, path.name, layout, 0, size, tracker.try_claim)
            primary = [next(ratings) for _ in range(after)]
            split = tracker.try_split(0.3)
            primary += list(ratings)
        tracker.check_done()
        if split is None:  # nothing left to split off
            assert primary == whole
            continue
        residual = split[1]
        assert primary + read_range(path, layout, residual.start, residual.stop) == whole


def test_executor_ranges_of_a_synthetic_file_read_as_the_whole_file(tmp_path, synth_data):
    d = synth.write_ml_latest(tmp_path / "latest", synth_data)
    path = d / "ratings.csv"
    source = executor.ratings_source(str(d), "ml-latest", None, None)
    assert source[2:4] == (str(path), path.stat().st_size)
    ranges = list(OffsetRange(0, source[3]).split(source[3] // 16))
    assert len(ranges) == 16
    read = sum((read_range(path, "ml-latest", r.start, r.stop) for r in ranges), [])
    assert read == list(ml.iter_ratings(d)) and len(read) == len(synth_data.ratings)


def test_range_sizes():
    assert executor.range_bytes(0) == executor.range_bytes(60_000) == 1 << 20  # one range
    assert executor.range_bytes(24_572_049) == 1_535_754  # 16 ranges of 1M ratings
    assert executor.range_bytes(20 << 30) == 64 << 20


# --- bad lines past the first range -----------------------------------------------------------


def line_start(path, number):
    """The byte offset where 1-based line `number` of `path` starts, and its text."""
    lines = path.read_bytes().split(b"\n")
    return sum(len(line) + 1 for line in lines[:number - 1]), lines[number - 1].decode()


def edit_line(path, number, function):
    lines = path.read_text().split("\n")
    lines[number - 1] = function(lines[number - 1])
    path.write_text("\n".join(lines))


def run_example_gen(data_dir, out, split="random", beam_args=None):
    examples = standard_artifacts.Examples()
    examples.uri = str(out)
    context = executor.Executor.Context(beam_pipeline_args=beam_args)
    executor.Executor(context).Do({}, {"examples": [examples]}, {
        "data_dir": str(data_dir), "layout": ml.detect_layout(data_dir), "split": split,
        "seed": 42, "eval_fraction": 0.2, "input_fingerprint": "x"})
    return examples


def example_gen_error(data_dir, out) -> str:
    """The one line `movierec run` prints for ExampleGen's failure on `data_dir`."""
    with pytest.raises(Exception) as info:
        run_example_gen(data_dir, out)
    return cli._one_line(info.value)


@pytest.fixture
def small_ranges(monkeypatch):
    """ExampleGen splits even a tiny ratings file into 16 ranges."""
    monkeypatch.setattr(executor, "MIN_RANGE_BYTES", 1024)


def test_a_bad_rating_in_the_second_half_names_its_offset_and_quotes_it(
        tmp_path, synth_data, small_ranges):
    d = synth.write_ml_latest(tmp_path / "latest", synth_data)
    path = d / "ratings.csv"
    edit_line(path, 2200, lambda line: ",".join(line.split(",")[:2] + ["5.5", "978300760"]))
    offset, text = line_start(path, 2200)
    assert offset > path.stat().st_size // 2 and 2200 > ml.PREFLIGHT_LINES
    assert ml.preflight(d) == "ml-latest"  # past the lines it checks
    message = example_gen_error(d, tmp_path / "out")
    assert message == f"ratings.csv line at byte {offset} ({text!r}): rating '5.5' outside 0.5..5"
    assert text.endswith(",5.5,978300760")
    # the whole-file reader, where it is used (the time split's cutoff), counts lines
    with pytest.raises(ml.DataError, match="^ratings.csv line 2200: rating '5.5' outside"):
        list(ml.iter_ratings(d))


def test_an_unknown_movie_in_the_second_half_names_its_offset_and_quotes_it(
        tmp_path, synth_data, small_ranges):
    d = synth.write_ml100k(tmp_path / "ml-100k", synth_data)
    path = d / "u.data"
    edit_line(path, 2000, lambda line: "\t".join(["7", "999", *line.split("\t")[2:]]))
    offset, text = line_start(path, 2000)
    assert offset > path.stat().st_size // 2
    message = example_gen_error(d, tmp_path / "out")
    assert message == (f"u.data line at byte {offset} ({text!r}): movie '999' (rated by user "
                       "'7') is not in u.item")


def test_other_bad_lines_past_the_first_range(tmp_path, synth_data):
    d = synth.write_ml_latest(tmp_path / "latest", synth_data)
    path = d / "ratings.csv"
    lines = path.read_text().split("\n")
    lines.insert(1999, "userId,movieId,rating,timestamp")  # line 2000
    lines.insert(2100, "7" * 100_000)  # line 2101, longer than MAX_LINE_BYTES
    path.write_text("\n".join(lines))
    size = path.stat().st_size
    header_at, _ = line_start(path, 2000)
    huge_at, _ = line_start(path, 2101)

    def error(start, end):
        with pytest.raises(ml.DataError) as info:
            read_range(path, "ml-latest", start, end)
        message = str(info.value)
        assert "\n" not in message
        return message

    # ml-latest's header is recognized at byte 0 only: elsewhere it is a repeated one
    assert error(header_at - 3, size) == (
        f"ratings.csv line at byte {header_at} ('userId,movieId,rating,timestamp'): rating "
        "'rating' is not a number (a repeated header line?)")
    assert error(header_at + 1, size) == (
        f"ratings.csv line at byte {huge_at} ('{'7' * 80}...'): longer than "
        f"{ml.MAX_LINE_BYTES} bytes (not a MovieLens file?)")
    # a range that starts inside the huge line skips it, in bounded reads
    assert read_range(path, "ml-latest", huge_at + 1, huge_at + 90_000) == []
    assert len(read_range(path, "ml-latest", huge_at + 1, size)) == len(lines) - 2102
    # a range from byte 0 still counts lines
    with pytest.raises(ml.DataError, match="^ratings.csv line 2000: rating 'rating' is not"):
        read_range(path, "ml-latest", 0, size)


# --- through Beam ------------------------------------------------------------------------------


def digest(record: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(record, digest_size=8).digest(), "little")


def digests(records) -> np.ndarray:
    return np.sort(np.fromiter((digest(r) for r in records), dtype=np.uint64))


def written(pattern, compression=""):
    """Sorted digests of the records of the TFRecord files matching `pattern`."""
    files = tf.io.gfile.glob(pattern)
    assert files, pattern
    dataset = tf.data.TFRecordDataset(files, compression_type=compression).batch(50_000)
    return digests(r for batch in dataset.as_numpy_iterator() for r in batch)


def unsplit(data_dir, split="random", seed=42, eval_fraction=0.2):
    """{train, eval: sorted digests of the serialized examples} of the in-process, unsplit
    read (movielens.iter_ratings over each whole file): what ExampleGen wrote before it
    read in ranges."""
    layout = ml.detect_layout(data_dir)
    movies, users = ml.read_movies(data_dir, layout), ml.read_users(data_dir, layout)
    encoder = executor.ExampleEncoder(movies, users)
    cutoff = executor.time_cutoff(data_dir, layout, eval_fraction) if split == "time" else 0
    out = {TRAIN: [], EVAL: []}
    every = []
    for file_name, fixed_split in splits.ratings_sources(split):
        for rating in ml.iter_ratings(data_dir, layout, file_name):
            where = executor.split_of(rating, fixed_split, split, seed, eval_fraction, cutoff)
            out[where].append(rating)
            every.append(rating)
    records = {s: [encoder.encode(r) for r in rated] for s, rated in out.items()}
    if split == "time":  # an eval example carries its user's latest 1,000 earlier ratings
        by_user = {}
        for r in every:
            by_user.setdefault(r.user_id, []).append((r.timestamp, r.movie_id, r.rating))
        records[EVAL] = []
        for r in out[EVAL]:
            earlier = sorted(x for x in by_user[r.user_id] if x[0] < r.timestamp)[-1000:]
            records[EVAL].append(ex.example(encoder.entries(r), ex.entries({
                "history_movie_ids": [m for _, m, _ in earlier],
                "history_ratings": [v for *_, v in earlier],
                "history_timestamps": [t for t, *_ in earlier]})))
    return {s: digests(rs) for s, rs in records.items()}


@pytest.mark.parametrize("split", ["random", "time", "fold:u1"])
def test_example_gen_in_ranges_writes_what_the_unsplit_read_gives(
        split, tmp_path, synth_data, small_ranges):
    d = synth.write_ml100k(tmp_path / "ml-100k", synth_data)
    lines = (d / "u.data").read_text().splitlines()
    (d / "u1.base").write_text("\n".join(lines[:2000]) + "\n")
    (d / "u1.test").write_text("\n".join(lines[2000:]) + "\n")
    examples = run_example_gen(d, tmp_path / "out", split)
    expected = unsplit(d, split)
    for name in (TRAIN, EVAL):
        got = written(f"{examples.uri}/Split-{name}/*", "GZIP")
        np.testing.assert_array_equal(got, expected[name])
    counts = json.loads(examples.get_string_custom_property("split_counts"))
    assert (counts[TRAIN], counts[EVAL]) == (len(expected[TRAIN]), len(expected[EVAL]))
    sources = [executor.ratings_source(str(d), "ml-100k", *source)
               for source in splits.ratings_sources(split)]
    ranges = sum(len(list(OffsetRange(0, s[3]).split(s[4]))) for s in sources)
    assert ranges >= 9 * len(sources)
    assert examples.get_int_custom_property("read_ranges") == ranges
    per_worker = json.loads(examples.get_string_custom_property("ratings_per_worker"))
    assert sum(per_worker.values()) == len(synth_data.ratings) and len(per_worker) == 1


@pytest.fixture(scope="module")
def million(tmp_path_factory):
    """1M synthetic ratings, ml-25m layout (24.6 MB of ratings.csv), as benchmarks use."""
    d = tmp_path_factory.mktemp("million") / "1m"
    synth.write_dataset(d, users=6666, movies=3700, ratings=1_000_000, seed=0)
    return d


def test_two_workers_share_a_million_ratings_file(million, tmp_path):
    """The reading stage of ExampleGen (RatingExamples, read, joined and split as the
    executor does) with 2 multi-processing workers: each reads a share of the one file,
    and the examples are exactly those of the unsplit in-process read."""
    options = PipelineOptions(["--direct_running_mode=multi_processing",
                               "--direct_num_workers=2"])
    pipeline = beam.Pipeline(options=options)
    rated = pipeline | "Ratings" >> executor.RatingExamples(
        str(million), "ml-latest", splits.ratings_sources("random"), "random", 42, 0.2, 0)
    for name in (TRAIN, EVAL):
        _ = rated[name] | f"Write{name}" >> beam.io.WriteToTFRecord(
            str(tmp_path / name / "data"))
    result = pipeline.run()
    result.wait_until_finish()
    stats = executor.read_statistics(result)
    assert stats["ranges"] == 16
    per_worker = stats["ratings_per_worker"]
    assert len(per_worker) == 2 and sum(per_worker.values()) == 1_000_000, per_worker
    assert min(per_worker.values()) > 250_000, per_worker  # 8 of the 16 ranges each
    assert executor.worker_name() not in per_worker  # not this process: the workers
    expected = unsplit(million)
    assert len(expected[TRAIN]) + len(expected[EVAL]) == 1_000_000
    for name in (TRAIN, EVAL):
        np.testing.assert_array_equal(written(str(tmp_path / name / "data*")), expected[name])

"""The CLI's behaviour before and around the pipeline: data resolution, bad arguments,
one-line errors and the output-directory lock."""

import fcntl
import os
import zipfile


from conftest import cli_output
from pipeline import cli


def _zip_dataset(directory, zip_path, name="ml-100k"):
    with zipfile.ZipFile(zip_path, "w") as zf:
        for f in directory.iterdir():
            zf.write(f, f"{name}/{f.name}")


def test_without_data_dir_the_dataset_is_fetched_into_the_cache(
        tmp_path, ml100k_dir, monkeypatch):
    server_root = tmp_path / "grouplens"
    server_root.mkdir()
    _zip_dataset(ml100k_dir, server_root / "ml-100k.zip")
    monkeypatch.setenv("MOVIEREC_DATA_URL", server_root.as_uri())
    monkeypatch.setenv("MOVIEREC_CACHE", str(tmp_path / "cache"))
    args = cli.build_parser().parse_args(["run", "--output-dir", str(tmp_path / "out")])
    data_dir = cli._resolve_data_dir(args)
    assert data_dir == str(tmp_path / "cache" / "ml-100k")
    assert (tmp_path / "cache" / "ml-100k" / "u.data").read_bytes() == (
        ml100k_dir / "u.data").read_bytes()


def test_bad_hyperparameter_is_one_line(tmp_path, ml100k_dir, capsys):
    rc, _, err = cli_output(capsys, "run", "--data-dir", str(ml100k_dir), "--output-dir",
                            str(tmp_path / "o"), "--hparam", "no_such_thing=1")
    assert rc == 2 and err == "movierec: error: unknown hyperparameters: no_such_thing"


def test_missing_data_dir_is_one_line(tmp_path, capsys):
    rc, _, err = cli_output(capsys, "run", "--data-dir", str(tmp_path / "nowhere"),
                            "--output-dir", str(tmp_path / "o"))
    assert rc == 2 and len(err.splitlines()) == 1 and "does not exist" in err


def test_unwritable_output_dir(tmp_path, ml100k_dir, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    rc, _, err = cli_output(capsys, "run", "--data-dir", str(ml100k_dir), "--output-dir",
                            str(blocker / "out"))
    assert rc != 0 and "cannot write output directory" in err


def test_a_second_run_on_a_busy_output_dir_refuses(tmp_path, ml100k_dir, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    with open(out / ".movierec.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        rc, _, err = cli_output(capsys, "run", "--data-dir", str(ml100k_dir),
                                "--output-dir", str(out))
    assert rc != 0 and "another movierec run is using" in err
    assert os.listdir(out) == [".movierec.lock"]  # nothing else was written


def test_inspect_without_a_store(tmp_path, capsys):
    rc, _, err = cli_output(capsys, "inspect", "metrics", "--output-dir", str(tmp_path))
    assert rc == 2 and "no metadata store" in err


def test_an_object_store_output_dir_is_refused(tmp_path, ml100k_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = cli_output(capsys, "run", "--data-dir", str(ml100k_dir), "--output-dir",
                            "gs://bucket/out")
    assert rc == 2 and err == ("movierec: error: output_dir must be a local directory (it "
                               "holds the run's lock and logs), not 'gs://bucket/out'")
    assert os.listdir(tmp_path) == []  # no ./gs: directory

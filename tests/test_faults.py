"""Faults: a run killed during the Trainer, then re-run; the metadata store afterwards."""

import json
import os
import signal
import subprocess
import sys
import time

from conftest import progress_states
from pipeline import cli, metadata

MOVIEREC = os.path.join(os.path.dirname(sys.executable), "movierec")
ARGS = ["--epochs", "20", "--batch-size", "256", "--rmse-upper-bound", "2.0"]


def _running_component(output_dir):
    """The component of a RUNNING execution in the store, or None."""
    path = os.path.join(output_dir, "metadata.sqlite")
    if not os.path.isfile(path):
        return None
    try:
        store = metadata.connect(path)
        for context in metadata.runs(store):
            for row in metadata.run_summary(store, context)["components"]:
                if row["state"] == "running":
                    return row["component"]
    except Exception:  # noqa: BLE001 - the store may be mid-write; ask again
        return None
    return None


def test_killed_trainer_then_rerun_completes_from_cache(ml100k_dir, tmp_path, capsys):
    out = tmp_path / "output"
    command = [MOVIEREC, "run", "--data-dir", str(ml100k_dir), "--output-dir", str(out),
               *ARGS]
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env, start_new_session=True)
    deadline = time.time() + 600
    try:
        while _running_component(str(out)) != "Trainer":
            assert process.poll() is None, process.stdout.read()
            assert time.time() < deadline, "the Trainer never started"
            time.sleep(0.5)
        time.sleep(2)  # well inside the Trainer
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (out / "serving").exists()  # nothing half-pushed

    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    lines = progress_states(rerun.stdout)
    for upstream in ("MovieLensExampleGen", "StatisticsGen", "SchemaGate", "Transform"):
        assert lines[upstream] == "cached", rerun.stdout
    assert lines["Trainer"] == "done" and lines["Pusher"] == "done"
    assert "interrupted" in rerun.stdout
    versions = os.listdir(out / "serving" / "movierec")
    assert len(versions) == 1

    capsys.readouterr()
    assert cli.main(["inspect", "runs", "--output-dir", str(out), "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert len(runs) == 2
    killed, finished = runs
    states = {row["component"]: row["state"] for row in killed["components"]}
    assert states["Trainer"] == "canceled" and killed["state"] == "interrupted"
    assert finished["state"] == "complete"
    assert all(row["state"] in ("executed", "cached") for row in finished["components"])
    # every artifact is either live (finished) or abandoned (the killed Trainer's output)
    assert cli.main(["inspect", "artifacts", "--output-dir", str(out), "--json"]) == 0
    artifacts = json.loads(capsys.readouterr().out)
    models = [a for a in artifacts if a["type"] == "Model"]
    live = [a for a in models if a["state"] == "live"]
    assert len(live) == 1 and live[0]["producer"] == "Trainer"
    assert all(a["state"] == "abandoned" for a in models if a not in live)

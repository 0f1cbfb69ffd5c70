"""serving/versions.py: which model version a path means, for every command and the
server: a version directory itself, the newest version, a given number, and the newest one
that loads when a newer one is broken."""

import shutil

import pytest

from pipeline.errors import UserError
from serving import versions
from trainer import saved_model
from trainer import signatures as S


@pytest.fixture(scope="module")
def serving_base(tmp_path_factory, trained_model):
    """BASE/movierec/{1,3} hold the trained model; BASE/movierec/5 is broken (a
    saved_model.pb that is not one); BASE/movierec/notes is not a version."""
    model_dir, _ = trained_model
    base = tmp_path_factory.mktemp("serving")
    model_base = base / versions.MODEL_NAME
    for v in ("1", "3"):
        shutil.copytree(model_dir, model_base / v)
    (model_base / "5").mkdir()
    (model_base / "5" / versions.SAVED_MODEL).write_bytes(b"not a SavedModel")
    (model_base / "notes").mkdir()
    return base


def test_a_version_dir_means_itself(serving_base):
    one = serving_base / "movierec" / "1"
    assert versions.resolve(str(one)) == str(one)
    with pytest.raises(UserError, match="is a version directory"):
        versions.resolve(str(one), version=3)


def test_newest_and_a_given_number(serving_base):
    model_base = serving_base / "movierec"
    assert versions.on_disk(str(model_base)) == {v: str(model_base / str(v))
                                                 for v in (1, 3, 5)}
    for path in (serving_base, model_base):  # a serving base or the model's base
        assert versions.resolve(str(path)) == str(model_base / "5")
        assert versions.resolve(str(path), version=1) == str(model_base / "1")
    with pytest.raises(UserError, match=r"no version 2 in .* \(versions: 1, 3, 5\)"):
        versions.resolve(str(model_base), version=2)


def test_nothing_there_is_one_line(tmp_path):
    with pytest.raises(UserError, match="no SavedModel in"):
        versions.resolve(str(tmp_path))
    with pytest.raises(UserError, match="no SavedModel in"):
        versions.resolve(str(tmp_path / "missing"))


def test_the_newest_that_loads_is_used_and_the_broken_one_named(serving_base, capsys):
    model, model_dir = versions.load_newest(str(serving_base), saved_model.load)
    assert model_dir == str(serving_base / "movierec" / "3")
    assert S.RECOMMEND_AT in model.signatures
    warning = capsys.readouterr().err.strip()
    assert warning.startswith("movierec: warning: version 5 does not load (")
    assert warning.endswith(f"using {model_dir}")
    with pytest.raises(UserError, match="cannot load the model in .*/5: "):
        versions.load_newest(str(serving_base), saved_model.load, version=5)


def test_a_check_can_refuse_a_version(serving_base, capsys):
    def check(model):
        return "not wanted"

    with pytest.raises(UserError, match=r"cannot load the model in .*/5: "):
        versions.load_newest(str(serving_base), saved_model.load, check=check)
    assert "version 3 does not load (not wanted)" not in capsys.readouterr().err

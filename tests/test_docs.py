"""The README says what the code does: its signature table names exactly the exported
signatures, with their inputs and outputs, and the CLI's help matches the options."""

import pathlib
import re

import tensorflow as tf

from trainer import signatures as S
from trainer import saved_model

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _signature_table() -> dict:
    """{signature: (input names, output names)} of the README's table under "Querying the
    pushed model" (the backticked names of each column)."""
    text = README.read_text()
    section = text.split("## Querying the pushed model", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        name = cells[0].strip("`")
        inputs, outputs = (set(re.findall(r"`([a-z_]+)`", c)) for c in cells[1:])
        if "+ context" in cells[1]:  # the context inputs, listed under the table
            inputs |= set(S.CONTEXT_INPUTS)
            assert all(f"`{n}`" in section for n in S.CONTEXT_INPUTS)
        rows[name] = (inputs, outputs)
    return rows


def test_readme_signature_table_names_the_exported_signatures(trained_model):
    model_dir, _ = trained_model
    model = saved_model.load(str(model_dir))
    table = _signature_table()
    assert set(table) == set(model.signatures) == set(S.ALL)
    for name, fn in model.signatures.items():
        inputs, outputs = table[name]
        assert inputs == set(fn.structured_input_signature[1]), name
        assert outputs == set(fn.structured_outputs), name


def test_readme_says_how_many_signatures():
    words = {3: "three", 4: "four", 5: "five", 6: "six", 7: "seven"}
    text = README.read_text().split("## Querying the pushed model", 1)[1][:400]
    assert f"with {words[len(S.ALL)]} signatures" in text


def test_every_run_option_is_in_the_readme():
    """Each option of `movierec run` appears in the README's CLI synopsis."""
    from pipeline import cli

    parser = cli.build_parser()
    run = parser._subparsers._group_actions[0].choices["run"]
    synopsis = README.read_text().split("## The CLI", 1)[1].split("\n## ", 1)[0]
    for action in run._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and flag != "--help":
                assert flag in synopsis, flag

"""The CLI's shared conventions: ``-o table|wide|json|yaml`` on every command that prints,
``--version``, and the output module's renderings."""

from __future__ import annotations

import argparse
import json
from importlib.metadata import version

import pytest
import yaml

from memwarden import cli
from memwarden.output import FORMATS, format_columns, render

pytestmark = pytest.mark.unit

#: Commands that print no document: the operator itself and the toolbox's capture.
NOT_PRINTING = {"run", "capture"}


def _sub_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def _printing_parsers() -> list[pytest.ParameterSet]:
    found = []
    for name, command in _sub_parsers(cli.build_parser()).items():
        if name in NOT_PRINTING:
            continue
        actions = _sub_parsers(command)
        for action, parser in actions.items() or [("", command)]:
            label = f"{name} {action}".strip()
            found.append(pytest.param(parser, id=label))
    return found


@pytest.mark.parametrize("parser", _printing_parsers())
def test_every_printing_command_has_the_same_output_flag(parser: argparse.ArgumentParser) -> None:
    flag = next(a for a in parser._actions if "--output" in a.option_strings)
    assert flag.option_strings == ["-o", "--output"]
    assert tuple(flag.choices or ()) == FORMATS


def test_download_writes_to_output_file_not_o() -> None:
    download = _sub_parsers(_sub_parsers(cli.build_parser())["incidents"])["download"]
    options = {s for a in download._actions for s in a.option_strings}
    assert {"-f", "--output-file", "-o", "--output", "--progress"} <= options


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"memwarden {version('memwarden')}\n"


DOCUMENT = {"name": "checkout", "limits": [1, 2]}


@pytest.mark.parametrize(
    ("output", "parse"),
    [
        pytest.param("json", json.loads, id="json"),
        pytest.param("yaml", yaml.safe_load, id="yaml"),
    ],
)
def test_documents_round_trip(output: str, parse: object) -> None:
    text = render(DOCUMENT, output=output, table=lambda wide: "unused")
    assert text.endswith("\n")
    assert parse(text) == DOCUMENT  # type: ignore[operator]


def test_table_and_wide_call_the_table_with_wide() -> None:
    assert render(DOCUMENT, output="table", table=lambda wide: f"wide={wide}") == "wide=False\n"
    assert render(DOCUMENT, output="wide", table=lambda wide: f"wide={wide}") == "wide=True\n"


def test_an_unknown_format_is_named() -> None:
    with pytest.raises(ValueError, match="'xml' is not one of table, wide, json, yaml"):
        render(DOCUMENT, output="xml", table=lambda wide: "")


def test_columns_are_padded_three_spaces_apart() -> None:
    assert format_columns(["NAME", "AGE"], [["a", "5m"], ["long-name", "1d"]]) == (
        "NAME        AGE\na           5m\nlong-name   1d"
    )

"""`--param KEY=VALUE` parsing: JSON values when they parse, strings otherwise, and a key
given again gathers its values in a list (llm-distill's `student_layers`)."""

from __future__ import annotations

import pytest
import typer

from modelfab.cli.common import parse_params


def test_values_are_json_when_they_parse() -> None:
    assert parse_params(["epochs=3", "lr=0.5", "name=fabi", "on=true", "xs=[1,2]"]) == {
        "epochs": 3, "lr": 0.5, "name": "fabi", "on": True, "xs": [1, 2],
    }  # fmt: skip


def test_a_repeated_key_gathers_a_list() -> None:
    params = parse_params(["student_layers=15", "student_layers=8", "student_layers=4"])
    assert params == {"student_layers": [15, 8, 4]}


def test_a_pair_without_equals_is_refused() -> None:
    with pytest.raises(typer.BadParameter):
        parse_params(["epochs"])

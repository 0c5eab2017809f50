"""One declaration of a bounded field, one validator: configs, result documents and submission.json alike."""

from __future__ import annotations

import dataclasses

import pytest

from hierarcaps.errors import DataError
from hierarcaps.fields import Bounds, bounded, schema_problem, schema_problems, section_schema


@pytest.mark.parametrize(("bounds", "value", "expected"), [
    (Bounds(low=0), -1, "must be at least 0, not -1"),
    (Bounds(low=0, open_low=True), 0, "must be above 0, not 0"),
    (Bounds(low=0, high=1), 1.5, "must be at least 0 and at most 1, not 1.5"),
    (Bounds(high=10), 10**400, "must be at most 10, not " + "1" + "0" * 36 + "..."),
    (Bounds(), float("nan"), "must be a finite number, not nan"),
    (Bounds(choices=("a", "b")), "c", "must be one of a, b; not 'c'"),
    (Bounds(min_length=1), "", "must not be empty"),
    (Bounds(max_length=3), "abcd", "over the limit of 3 character(s) (4)"),
    (Bounds(min_items=2, max_items=2), [1], "must hold 2 item(s), not 1"),
    (Bounds(low=0, high=1), 0.5, None), (Bounds(low=0), True, None), (Bounds(max_length=3), "abc", None),
])
def test_bounds_say_what_is_wrong_in_words(bounds: Bounds, value: object, expected: str | None) -> None:
    assert bounds.problem(value) == expected


@pytest.mark.parametrize("bounds", [Bounds(low=1), Bounds(low=0, open_low=True, high=2), Bounds(min_length=1),
                                    Bounds(max_length=9, min_items=None), Bounds(min_items=2, max_items=2)])
def test_the_json_schema_of_bounds_reads_back_as_the_same_bounds(bounds: Bounds) -> None:
    assert Bounds.from_json_schema(bounds.json_schema()) == bounds


@dataclasses.dataclass
class Declared:
    """A section declared once."""

    steps: int = bounded(10, description="how many", low=1, high=100)
    name: str = bounded("x", min_length=1)


def test_one_declaration_is_checked_alike_as_a_setting_and_as_a_json_document() -> None:
    """The same field, read as a YAML/CLI setting (``configs``) and inside a JSON document checked against the
    schema derived from it (``results``, ``submission.json``), fails with the same words; the control passes."""
    from hierarcaps.configs import build_section

    schema = {"$ref": "#/$defs/Declared", "$defs": {"Declared": section_schema(Declared, open_section=False)}}
    assert schema["$defs"]["Declared"]["properties"]["steps"] == {
        "type": "integer", "minimum": 1, "maximum": 100, "description": "how many"}
    for value, words in ((0, "must be at least 1 and at most 100, not 0"), (101, "not 101")):
        with pytest.raises(DataError, match=words) as raised:
            build_section(Declared, {"steps": value}, "c.yaml", "section")
        assert "field 'section.steps'" in str(raised.value)
        assert words in schema_problem({"steps": value, "name": "x"}, schema)
    assert list(schema_problems({"steps": 0, "name": ""}, schema)) == [
        "steps: must be at least 1 and at most 100, not 0", "name: must not be empty"]       # every problem
    assert build_section(Declared, {"steps": 100}, None, "") == Declared(100)
    assert schema_problem({"steps": 100, "name": "x"}, schema) is None


def test_the_board_and_the_result_share_the_parameter_bound() -> None:
    """A parameter count is bounded once (results.MAX_PARAMETERS): submission.json and a stored result refuse
    the same value in the same words."""
    from hierarcaps.leaderboard.submission import submission_schema
    from hierarcaps.results import MAX_PARAMETERS, schema

    too_many = MAX_PARAMETERS + 1
    in_result = schema_problem({"name": "m", "parameters": too_many}, schema()["$defs"]["ModelInfo"])
    in_submission = schema_problem(
        {"name": "m", "revision": "r", "parameters": too_many, "licence": "", "link": "", "training_data": ""},
        submission_schema()["$defs"]["SubmittedModel"])
    assert in_result == in_submission == f"parameters: must be at least 0 and at most {MAX_PARAMETERS}, not {too_many}"

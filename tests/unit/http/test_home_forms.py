"""The payload form generated from a job type's JSON Schema, and the payload a posted form
makes (typed as the schema asks)."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any, Literal

from pydantic import ConfigDict, Field

from conveyor.http.home.forms import FREE_FIELD, field_of_error, payload_form
from conveyor.registry import Payload


class Colour(enum.StrEnum):
    RED = "red"
    BLUE = "blue"


class Inner(Payload):
    x: int


class Everything(Payload):
    name: str = Field(description="Who it is for", max_length=20)
    colour: Colour = Colour.RED
    size: Literal["s", "m", "l"] = "m"
    when: dt.datetime | None = None
    day: dt.date | None = None
    count: int = Field(3, ge=1, le=10)
    ratio: float = Field(0.5, gt=0, lt=1)
    above: int = Field(1, gt=0)
    loud: bool = False
    maybe: bool | None = None
    tags: list[str] = Field(default_factory=list)
    inner: Inner | None = None


def _fields() -> dict[str, Any]:
    form = payload_form(Everything.model_json_schema())
    return {f.name: f for f in form.fields}


def test_each_schema_type_gets_its_input() -> None:
    fields = _fields()
    widgets = {name: f.widget for name, f in fields.items()}
    assert widgets == {
        "name": "text",
        "colour": "select",
        "size": "select",
        "when": "datetime",
        "day": "date",
        "count": "integer",
        "ratio": "number",
        "above": "integer",
        "loud": "checkbox",
        "maybe": "choice",
        "tags": "json",
        "inner": "json",
    }


def test_required_marks_hints_limits_and_defaults_come_from_the_schema() -> None:
    fields = _fields()
    name = fields["name"]
    assert name.required and name.hint == "Who it is for" and name.max_length == 20
    assert name.key == "payload.name"
    assert not fields["count"].required
    assert (fields["count"].min_text, fields["count"].max_text) == ("1", "10")
    assert fields["count"].default == "3" and fields["count"].step == "1"
    # An exclusive bound of an integer is the next whole number; a float's is left to validation.
    assert fields["above"].min_text == "1"
    assert fields["ratio"].min_text == "" and fields["ratio"].step == "any"
    assert [posted for posted, _ in fields["colour"].options] == ["red", "blue"]
    assert fields["colour"].default == "red"
    assert fields["size"].default == "m"
    assert fields["loud"].default == ""
    assert fields["tags"].default == ""  # a default_factory is not in the schema
    assert "UTC" in fields["when"].hint


def test_a_posted_form_makes_a_typed_payload() -> None:
    form = payload_form(Everything.model_json_schema())
    payload, errors = form.payload(
        {
            "payload.name": " Ada ",
            "payload.colour": "blue",
            "payload.size": "l",
            "payload.when": "2030-01-02T03:04",
            "payload.day": "2030-01-02",
            "payload.count": "7",
            "payload.ratio": "0.25",
            "payload.above": "",
            "payload.loud": "on",
            "payload.maybe": "false",
            "payload.tags": '["a", "b"]',
            "payload.inner": '{"x": 1}',
        }
    )
    assert errors == {}
    assert payload == {
        "name": "Ada",
        "colour": "blue",
        "size": "l",
        "when": "2030-01-02T03:04:00+00:00",
        "day": "2030-01-02",
        "count": 7,
        "ratio": 0.25,
        "loud": True,
        "maybe": False,
        "tags": ["a", "b"],
        "inner": {"x": 1},
    }
    model = Everything.model_validate(payload)
    assert model.when == dt.datetime(2030, 1, 2, 3, 4, tzinfo=dt.UTC)
    assert model.above == 1  # left empty: the default


def test_an_unchecked_box_is_false_and_empty_inputs_are_left_out() -> None:
    form = payload_form(Everything.model_json_schema())
    payload, errors = form.payload({"payload.name": "x"})
    assert errors == {}
    assert payload == {"name": "x", "loud": False}


def test_inputs_that_cannot_be_read_as_their_type_are_errors_of_their_field() -> None:
    form = payload_form(Everything.model_json_schema())
    payload, errors = form.payload(
        {
            "payload.name": "x",
            "payload.count": "2.5",
            "payload.ratio": "nan",
            "payload.colour": "green",
            "payload.when": "tomorrow",
            "payload.tags": "[1,",
        }
    )
    assert set(errors) == {
        "payload.count",
        "payload.ratio",
        "payload.colour",
        "payload.when",
        "payload.tags",
    }
    assert errors["payload.count"] == "must be a whole number"
    assert errors["payload.tags"].startswith("not valid JSON")
    assert payload == {"name": "x", "loud": False}


def test_a_time_with_no_utc_equivalent_is_an_error_of_its_field() -> None:
    form = payload_form(Everything.model_json_schema())
    for edge in ("0001-01-01T00:00+14:00", "9999-12-31T23:59-14:00"):
        payload, errors = form.payload({"payload.name": "x", "payload.when": edge})
        assert errors == {"payload.when": "out of range (no such time in UTC)"}, edge
    # The first and last moments themselves are fine, and an earlier payload's time that has
    # no UTC equivalent leaves the input empty.
    payload, errors = form.payload({"payload.name": "x", "payload.when": "0001-01-01T00:00"})
    assert errors == {} and payload["when"] == "0001-01-01T00:00:00+00:00"
    assert _fields()["when"].show("0001-01-01T00:00:00+14:00") == ""


def test_a_payload_that_takes_any_fields_is_one_json_object() -> None:
    class Anything(Payload):
        model_config = ConfigDict(extra="allow")

    form = payload_form(Anything.model_json_schema())
    assert form.fields == () and form.free
    assert form.defaults() == {FREE_FIELD: "{}"}
    payload, errors = form.payload({FREE_FIELD: '{"a": [1, 2]}'})
    assert (payload, errors) == ({"a": [1, 2]}, {})
    _, errors = form.payload({FREE_FIELD: "[1]"})
    assert errors == {FREE_FIELD: "must be a JSON object"}
    _, errors = form.payload({FREE_FIELD: '{"a": NaN}'})
    assert FREE_FIELD in errors
    _, errors = form.payload({FREE_FIELD: "[" * 10_000 + "]" * 10_000})
    assert errors == {FREE_FIELD: "nested too deeply"}


def test_a_closed_payload_takes_no_free_fields() -> None:
    assert not payload_form(Everything.model_json_schema()).free


def test_errors_go_next_to_the_input_they_name() -> None:
    inputs = {"payload.tags", "payload.count", "payload", "delay_seconds"}
    assert field_of_error("payload.count", inputs) == "payload.count"
    assert field_of_error("payload.tags.0", inputs) == "payload.tags"
    assert field_of_error("payload.unknown", inputs) == "payload"
    assert field_of_error("delay_seconds", inputs) == "delay_seconds"
    assert field_of_error("type", inputs) is None


def test_an_earlier_payload_fills_the_form_that_makes_it_again() -> None:
    form = payload_form(Everything.model_json_schema())
    earlier = Everything(
        name="Ada",
        colour=Colour.BLUE,
        when=dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        count=4,
        ratio=0.25,
        loud=True,
        maybe=False,
        tags=["a"],
        inner=Inner(x=2),
    ).model_dump(mode="json")
    values = form.values_of(earlier)
    assert values["payload.when"] == "2030-01-02T03:04:05"
    assert values["payload.loud"] == "on" and values["payload.maybe"] == "false"
    assert values["payload.day"] == ""  # None: left empty
    payload, errors = form.payload(values)
    assert errors == {}
    assert Everything.model_validate(payload).model_dump(mode="json") == earlier


def test_an_earlier_free_payload_fills_its_json_object() -> None:
    class Anything(Payload):
        model_config = ConfigDict(extra="allow")

    form = payload_form(Anything.model_json_schema())
    values = form.values_of({"a": [1, 2]})
    assert form.payload(values) == ({"a": [1, 2]}, {})

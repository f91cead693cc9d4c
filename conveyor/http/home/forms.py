"""The form of a job type's payload, generated from its JSON Schema, and the payload a posted
form makes.

Each property of the payload model becomes one input: a string a text box (a select for an
`enum`, a date or date-and-time picker for those formats), an integer or a number a number
box with the schema's bounds, a boolean a checkbox; anything else (arrays, objects, unions)
a JSON text area. The posted strings are turned back into the types the schema asks for, so
the payload the job gets is the one an API client would send; what cannot be read as its
type is an error next to its field, and the payload model's own validation does the rest.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic_core import from_json

__all__ = [
    "FREE_FIELD",
    "FormField",
    "PayloadForm",
    "field_of_error",
    "payload_form",
]

#: The form's name for the JSON object of payload fields the schema does not list (a payload
#: that takes any fields), and where errors about the payload as a whole are shown.
FREE_FIELD = "payload"
_INTEGER = re.compile(r"^[+-]?\d{1,30}$")
#: What an <input type="datetime-local"> sends: to the minute, or to the second.
_LOCAL_FORMATS = ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S")


@dataclass(frozen=True)
class FormField:
    """One input of the form: which widget, its label and hint, and the schema's limits."""

    name: str  #: the payload's key
    widget: str  #: text, select, datetime, date, integer, number, checkbox, choice, json
    label: str
    required: bool = False
    hint: str = ""
    #: A select's choices: (the posted text, the value it stands for).
    options: tuple[tuple[str, Any], ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    max_length: int | None = None
    #: The default as the input shows it ("" for none; "on" for a checked checkbox).
    default: str = ""

    @property
    def key(self) -> str:
        """The input's name, which is also the field an error about it names."""
        return f"{FREE_FIELD}.{self.name}"

    @property
    def step(self) -> str:
        return "1" if self.widget == "integer" else "any"

    @property
    def min_text(self) -> str:
        """The `min` attribute's value ("" for none)."""
        return "" if self.minimum is None else _text(self.minimum)

    @property
    def max_text(self) -> str:
        return "" if self.maximum is None else _text(self.maximum)

    def show(self, value: Any) -> str:
        """`value` as this input shows it (what `parse` reads back as the same value)."""
        if self.widget == "checkbox":
            return "on" if value else ""
        if value is None:
            return ""
        if self.widget == "json":
            return json.dumps(value, indent=2)
        if self.widget == "datetime":
            return _local(str(value))
        return _text(value)

    def parse(self, text: str) -> tuple[bool, Any]:
        """(present, value) of the posted `text`: not present when left empty (the model's
        default applies, or its "required" error); ValueError with a message when unreadable."""
        if self.widget == "checkbox":
            return True, text != ""
        if text == "":
            return False, None
        if self.widget in ("select", "choice"):
            for posted, value in self.options:
                if posted == text:
                    return True, value
            raise ValueError("not one of the choices")
        if self.widget == "integer":
            return True, _integer(text)
        if self.widget == "number":
            return True, _number(text)
        if self.widget == "datetime":
            return True, _datetime(text)
        if self.widget == "json":
            return True, _json(text)
        return True, text


@dataclass(frozen=True)
class PayloadForm:
    """The inputs of a job type's payload, and whether it takes fields beyond them."""

    fields: tuple[FormField, ...]
    #: The payload takes fields the schema does not name: a JSON object of them, posted as
    #: `payload` (the whole payload when `fields` is empty).
    free: bool = False
    free_default: str = field(default="")

    def defaults(self) -> dict[str, str]:
        """The posted-form values a new form starts with."""
        values = {f.key: f.default for f in self.fields}
        if self.free:
            values[FREE_FIELD] = self.free_default
        return values

    def values_of(self, payload: Mapping[str, Any]) -> dict[str, str]:
        """The posted-form values that make `payload` again (a form filled in from an earlier
        job's input)."""
        values = {f.key: f.show(payload[f.name]) if f.name in payload else "" for f in self.fields}
        if self.free:
            named = {f.name for f in self.fields}
            rest = {k: v for k, v in payload.items() if k not in named}
            values[FREE_FIELD] = json.dumps(rest, indent=2) if rest or not self.fields else ""
        return values

    def payload(self, posted: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
        """The payload the posted form makes, and the errors of inputs that could not be read
        (by input name)."""
        payload: dict[str, Any] = {}
        errors: dict[str, str] = {}
        if self.free:
            text = posted.get(FREE_FIELD, "").strip()
            if text:
                try:
                    extra = _json(text)
                except ValueError as exc:
                    errors[FREE_FIELD] = str(exc)
                else:
                    if isinstance(extra, dict):
                        payload.update(extra)
                    else:
                        errors[FREE_FIELD] = "must be a JSON object"
        for spec in self.fields:
            text = posted.get(spec.key, "")
            try:
                present, value = spec.parse(text.strip())
            except ValueError as exc:
                errors[spec.key] = str(exc)
                continue
            if present:
                payload[spec.name] = value
        return payload, errors


def payload_form(schema: Mapping[str, Any]) -> PayloadForm:
    """The form of a payload model's `model_json_schema()`."""
    defs = schema.get("$defs", {})
    required = set(schema.get("required", ()))
    fields = tuple(
        _field(name, prop, defs, name in required)
        for name, prop in schema.get("properties", {}).items()
    )
    extra = schema.get("additionalProperties", not fields)
    free = extra is not False
    return PayloadForm(fields, free, "{}" if free and not fields else "")


def field_of_error(name: str, inputs: set[str]) -> str | None:
    """The input an error about `name` (`payload.items.0`, `delay_seconds`) belongs next to:
    the longest input name it starts with, else None (shown above the form)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in inputs:
            return candidate
    return None


def _field(
    name: str, prop: Mapping[str, Any], defs: Mapping[str, Any], required: bool
) -> FormField:
    label = str(prop.get("title") or name.replace("_", " ").capitalize())
    hint = str(prop.get("description") or "")
    schema, nullable = _unwrap(prop, defs)
    has_default = "default" in prop
    default = prop.get("default")
    kind = schema.get("type")
    common: dict[str, Any] = {"label": label, "required": required, "hint": hint}
    if "enum" in schema:
        options = tuple((_text(v), v) for v in schema["enum"])
        return FormField(
            name, "select", options=options, default=_text(default) if has_default else "", **common
        )
    if kind == "boolean":
        if nullable:  # three answers: yes, no, or none
            options = (("true", True), ("false", False))
            shown = "" if default is None else _text(default)
            return FormField(name, "choice", options=options, default=shown, **common)
        return FormField(name, "checkbox", default="on" if default else "", **common)
    if kind in ("integer", "number"):
        return FormField(
            name,
            kind,
            minimum=_bound(schema, "minimum", "exclusiveMinimum", kind, +1),
            maximum=_bound(schema, "maximum", "exclusiveMaximum", kind, -1),
            default=_text(default) if has_default and default is not None else "",
            **common,
        )
    if kind == "string":
        shown = str(default) if has_default and default is not None else ""
        fmt = schema.get("format")
        if fmt == "date-time":
            return FormField(name, "datetime", default=_local(shown), **_utc(common))
        if fmt == "date":
            return FormField(name, "date", default=shown, **common)
        return FormField(name, "text", max_length=schema.get("maxLength"), default=shown, **common)
    shown = json.dumps(default, indent=2) if has_default and default is not None else ""
    return FormField(name, "json", default=shown, **_json_hint(common))


def _unwrap(prop: Mapping[str, Any], defs: Mapping[str, Any]) -> tuple[Mapping[str, Any], bool]:
    """The property's schema with `$ref`s followed and an optional's `null` taken off, and
    whether it may be null."""
    schema = _deref(prop, defs)
    for union in ("anyOf", "oneOf"):
        if union in schema:
            branches = [_deref(b, defs) for b in schema[union]]
            others = [b for b in branches if b.get("type") != "null"]
            nullable = len(others) < len(branches)
            if len(others) == 1:
                return others[0], nullable
            return {}, nullable  # a real union: JSON
    if isinstance(schema.get("type"), list):  # ["string", "null"]
        types = [t for t in schema["type"] if t != "null"]
        nullable = len(types) < len(schema["type"])
        return ({**schema, "type": types[0]} if len(types) == 1 else {}), nullable
    return schema, False


def _deref(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    seen = 0
    while "$ref" in schema and seen < 20:
        target = defs.get(str(schema["$ref"]).rsplit("/", 1)[-1], {})
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        seen += 1
    if "allOf" in schema and len(schema["allOf"]) == 1:
        rest = {k: v for k, v in schema.items() if k != "allOf"}
        schema = {**_deref(schema["allOf"][0], defs), **rest}
    return schema


def _bound(
    schema: Mapping[str, Any], inclusive: str, exclusive: str, kind: str, direction: int
) -> float | None:
    """A number input's min (direction +1) or max (-1): an exclusive bound of an integer is
    the next whole number inside it; a number's cannot be said, and is left to validation."""
    if inclusive in schema:
        return float(schema[inclusive])
    if exclusive in schema and kind == "integer":
        edge = float(schema[exclusive])
        return float(math.floor(edge) + 1 if direction > 0 else math.ceil(edge) - 1)
    return None


def _text(value: Any) -> str:
    """A value as an input shows it (JSON's spelling for booleans and null)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else str(value)
    return str(value)


def _utc(common: dict[str, Any]) -> dict[str, Any]:
    hint = common["hint"]
    return {**common, "hint": f"{hint} (UTC)" if hint else "UTC"}


def _json_hint(common: dict[str, Any]) -> dict[str, Any]:
    hint = common["hint"]
    return {**common, "hint": f"{hint} (JSON)" if hint else "JSON"}


def _local(value: str) -> str:
    """An ISO 8601 time as a datetime-local input shows it (UTC, to the second)."""
    if not value:
        return ""
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return ""
    if when.tzinfo is not None:
        try:
            when = when.astimezone(dt.UTC).replace(tzinfo=None)
        except OverflowError:  # 0001-01-01T00:00+14:00 (sent to the API) has no UTC time
            return ""
    return when.isoformat(timespec="seconds")  # strftime writes year 1 as "1"


def _integer(text: str) -> int:
    if _INTEGER.match(text):
        return int(text)
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if math.isfinite(number) and number.is_integer():
        return int(number)
    raise ValueError("must be a whole number")


def _number(text: str) -> int | float:
    if _INTEGER.match(text):
        return int(text)
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise ValueError("must be a number")
    return number


def _datetime(text: str) -> str:
    """A datetime-local input's value, read as UTC, in RFC 3339."""
    for fmt in _LOCAL_FORMATS:
        try:
            return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.UTC).isoformat()
        except ValueError:
            continue
    try:  # a time typed with its offset
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("must be a date and time (YYYY-MM-DDTHH:MM, UTC)") from None
    if when.tzinfo is None:
        return when.replace(tzinfo=dt.UTC).isoformat()
    try:
        when.astimezone(dt.UTC)
    except OverflowError:
        raise ValueError("out of range (no such time in UTC)") from None
    return when.isoformat()


def _json(text: str) -> Any:
    """A JSON input's value, read as the API reads a body: strict (no NaN or Infinity) and
    nested at most as deep as its parser goes (deeper would exhaust Python's stack later)."""
    if not text.strip():
        return None
    try:
        return from_json(text, allow_inf_nan=False)
    except ValueError as exc:
        if "recursion limit" in str(exc):
            raise ValueError("nested too deeply") from None
        raise ValueError(f"not valid JSON: {exc}") from None

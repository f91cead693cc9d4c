"""Notification kinds and their Jinja2 templates: sandboxed, strict, autoescaped for HTML.

A kind is a folder `<kind>/` holding `kind.json` (description, `critical`, `system`,
`sensitive`, default channels, a sample context) and a template per part of each channel it
supports:

| channel | files |
| --- | --- |
| email | `email_subject.txt`, `email.txt`, `email.html` (at least one body) |
| sms | `sms.txt` |
| push | `push_title.txt`, `push_body.txt`, optional `push_data.json` |
| webhook | `webhook.json` |

A variable the context lacks is an error when the template renders (`RenderError`), never
an empty string; so is a template or a rendered part larger than the size limit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

#: The built-in kinds.
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "templates" / "notifications"
KIND_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,99}$")
#: Names every template sees besides the notification's context.
RESERVED = frozenset({"recipient", "notification", "unsubscribe_url", "items"})

#: The parts of each channel: attribute of `Rendered` -> template file.
PARTS: dict[str, dict[str, str]] = {
    "email": {"subject": "email_subject.txt", "text": "email.txt", "html": "email.html"},
    "sms": {"text": "sms.txt"},
    "push": {"subject": "push_title.txt", "text": "push_body.txt", "data": "push_data.json"},
    "webhook": {"data": "webhook.json"},
}
#: The parts a channel cannot do without (email needs a subject and one of its bodies).
REQUIRED: dict[str, tuple[str, ...]] = {
    "email": ("email_subject.txt",),
    "sms": ("sms.txt",),
    "push": ("push_title.txt", "push_body.txt"),
    "webhook": ("webhook.json",),
}


class RenderError(Exception):
    """A template could not be rendered (a missing variable, a sandbox refusal, too large)."""


class UnknownKindError(Exception):
    """No notification kind has this name."""


@dataclass(frozen=True)
class Kind:
    """A notification kind, as its `kind.json` declares it."""

    name: str
    description: str
    #: Critical kinds (a password reset, a security notice) are sent whatever the preferences.
    critical: bool
    #: The channels a user recipient gets "by preference" unless they opted out.
    default_channels: tuple[str, ...]
    #: The channels it has templates for.
    channels: tuple[str, ...]
    sample: dict[str, Any] = field(default_factory=dict)
    #: A digest kind batches what arrives for one recipient (and channel) within this many
    #: seconds into one message, whose templates see each notification's context in `items`.
    digest_seconds: int | None = None
    #: Only Conveyor itself sends it (the auth emails): the API refuses to create or preview it.
    system: bool = False
    #: Its context holds secrets (a reset link): never shown in API answers, and erased once
    #: every delivery of the notification is settled.
    sensitive: bool = False
    #: Its folder (its templates are those beside its `kind.json`, nowhere else).
    folder: Path = field(default=BUILTIN_DIR, repr=False)
    #: Its folder's prefix in the template loader.
    prefix: str = "0"


@dataclass(frozen=True)
class Rendered:
    """The parts of one message, as rendered for one channel."""

    subject: str | None = None
    text: str | None = None
    html: str | None = None
    data: dict[str, Any] | None = None


class _SizedLoader(jinja2.FileSystemLoader):
    """A file loader that refuses templates larger than `max_bytes`."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        super().__init__(str(path))
        self.max_bytes = max_bytes

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        source, filename, uptodate = super().get_source(environment, template)
        if len(source.encode()) > self.max_bytes:
            raise RenderError(
                f"template {template} is larger than {self.max_bytes} bytes "
                "(CONVEYOR_NOTIFICATION_TEMPLATE_MAX_BYTES)"
            )
        return source, filename, uptodate


class Templates:
    """The notification kinds of a deployment (its own folder first, then the built-ins)."""

    def __init__(self, *, max_bytes: int, extra_dir: Path | None = None) -> None:
        self.max_bytes = max_bytes
        self.dirs = [d for d in (extra_dir, BUILTIN_DIR) if d is not None]
        loaders: dict[str, jinja2.BaseLoader] = {
            str(i): _SizedLoader(d, max_bytes) for i, d in enumerate(self.dirs)
        }
        self.env = SandboxedEnvironment(
            loader=jinja2.PrefixLoader(loaders),
            undefined=jinja2.StrictUndefined,
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",)),
            keep_trailing_newline=False,
            auto_reload=False,
        )
        self._kinds = self._read_kinds()

    def _read_kinds(self) -> dict[str, Kind]:
        kinds: dict[str, Kind] = {}
        for index in reversed(range(len(self.dirs))):  # the deployment's own win
            for meta in sorted(self.dirs[index].glob("*/kind.json")):
                name = meta.parent.name
                if KIND_PATTERN.match(name):
                    kinds[name] = _kind(name, meta, str(index))
        return kinds

    def kinds(self) -> list[Kind]:
        return [self._kinds[name] for name in sorted(self._kinds)]

    def kind(self, name: str) -> Kind:
        try:
            return self._kinds[name]
        except KeyError:
            raise UnknownKindError(name) from None

    def render(
        self,
        kind: str,
        channel: str,
        context: Mapping[str, Any],
        *,
        recipient: Mapping[str, Any],
        notification: Mapping[str, Any],
        unsubscribe_url: str | None = None,
        items: list[dict[str, Any]] | None = None,
    ) -> Rendered:
        """The parts of `kind`'s message on `channel`; RenderError when a template fails."""
        spec = self.kind(kind)
        if channel not in spec.channels:
            raise RenderError(f"kind {kind!r} has no templates for the {channel} channel")
        variables = {
            **context,
            "recipient": dict(recipient),
            "notification": dict(notification),
            "unsubscribe_url": unsubscribe_url,
            "items": items if items is not None else [dict(context)],
        }
        parts: dict[str, Any] = {}
        for part, filename in PARTS[channel].items():
            if not (spec.folder / filename).is_file():
                continue
            name = f"{spec.prefix}/{kind}/{filename}"
            text = self._render(name, variables)
            if filename.endswith(".json"):
                parts[part] = _json_object(f"{kind}/{filename}", text)
            elif filename.endswith(".txt") and part == "subject":
                parts[part] = " ".join(text.split())  # one line: no header injection
            else:
                parts[part] = text
        return Rendered(**parts)

    def _render(self, name: str, variables: Mapping[str, Any]) -> str:
        shown = name.partition("/")[2]  # without the loader's prefix
        try:
            text = self.env.get_template(name).render(variables)
        except jinja2.UndefinedError as exc:
            raise RenderError(f"{shown}: {exc.message} (a variable the context lacks)") from None
        except jinja2.TemplateError as exc:  # syntax, sandbox refusals
            raise RenderError(f"{shown}: {exc}") from None
        except Exception as exc:
            raise RenderError(f"{shown}: {type(exc).__name__}: {exc}") from None
        if len(text.encode()) > self.max_bytes:
            raise RenderError(f"{shown} renders larger than {self.max_bytes} bytes")
        return text.strip() + ("\n" if name.endswith(("/email.txt", "/email.html")) else "")


def _json_object(name: str, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise RenderError(
            f"{name} does not render to JSON: {exc} (use the tojson filter)"
        ) from None
    if not isinstance(value, dict):
        raise RenderError(f"{name} must render to a JSON object")
    return value


def _kind(name: str, meta: Path, prefix: str) -> Kind:
    try:
        spec = json.loads(meta.read_text())
    except ValueError as exc:
        raise ValueError(f"{meta}: not valid JSON: {exc}") from None
    folder = meta.parent
    channels = tuple(
        channel for channel in PARTS if all((folder / f).is_file() for f in REQUIRED[channel])
    )
    defaults = tuple(spec.get("channels", ["email"] if "email" in channels else []))
    unknown = [c for c in defaults if c not in channels]
    if unknown:
        raise ValueError(f"{meta}: default channels without templates: {unknown}")
    digest = spec.get("digest_seconds")
    if digest is not None and not (isinstance(digest, int) and digest > 0):
        raise ValueError(f"{meta}: digest_seconds must be a positive whole number of seconds")
    flags = {flag: spec.get(flag, False) for flag in ("critical", "system", "sensitive")}
    wrong = [flag for flag, value in flags.items() if not isinstance(value, bool)]
    if wrong:
        raise ValueError(f"{meta}: {wrong[0]} must be true or false")
    if digest is not None and flags["sensitive"]:  # a digest would hold secrets until it goes
        raise ValueError(f"{meta}: a sensitive kind cannot be a digest (digest_seconds)")
    return Kind(
        name=name,
        digest_seconds=digest,
        description=str(spec.get("description", "")),
        critical=flags["critical"],
        system=flags["system"],
        sensitive=flags["sensitive"],
        default_channels=defaults,
        channels=channels,
        sample=dict(spec.get("sample", {})),
        folder=folder,
        prefix=prefix,
    )

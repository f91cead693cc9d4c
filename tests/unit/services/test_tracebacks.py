"""The traceback kept with a failed attempt: the job's own frames, secrets masked, its end
kept within the limit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import SecretStr

from conveyor.services.tracebacks import MASK, Tracebacks, cut
from tests import stack as stacks

#: A function of a `conveyor.workers` module, which calls the job as the lifecycle does.
WORKER = """
def run(fn):
    try:
        fn()
    except Exception as exc:
        return exc
"""


def _worker_calls(fn: Callable[[], Any]) -> BaseException:
    """What `fn` raised, called (and caught) in a frame of the worker's machinery."""
    namespace: dict[str, Any] = {"__name__": "conveyor.workers.fake"}
    exec(WORKER, namespace)
    exc = namespace["run"](fn)
    assert isinstance(exc, BaseException)
    return exc


def _job() -> None:
    _helper()


def _helper() -> None:
    raise KeyError("missing")


def test_the_traceback_starts_at_the_job_and_ends_with_the_error() -> None:
    text = Tracebacks(16384).format(_worker_calls(_job))
    assert text is not None
    assert text.startswith("Traceback (most recent call last):\n")
    assert "conveyor/workers" not in text and "in run" not in text
    assert "in _job\n    _helper()" in text
    assert text.rstrip().endswith("KeyError: 'missing'")


def test_an_error_raised_outside_the_jobs_code_has_no_traceback() -> None:
    namespace: dict[str, Any] = {"__name__": "conveyor.workers.fake"}
    exec("def refuse():\n    raise ValueError('the worker refused')\n", namespace)
    assert Tracebacks(16384).format(_worker_calls(namespace["refuse"])) is None
    assert Tracebacks(16384).format(ValueError("never raised")) is None


def test_the_servers_secrets_are_masked() -> None:
    settings = stacks.test_settings(
        secret_key=SecretStr("k" * 40),
        database_url="postgresql+psycopg://app:db%2Fpass@db:5432/conveyor",
        broker_url="amqp://guest:rabbit-pass@mq:5672/%2F",
        redis_url="redis://:redis-pass@cache:6379/0",
    )
    tracebacks = Tracebacks.of(settings)

    def leak() -> None:
        raise RuntimeError(f"{'k' * 40} db/pass db%2Fpass rabbit-pass redis-pass guest")

    text = tracebacks.format(_worker_calls(leak))
    assert text is not None
    last = text.rstrip().splitlines()[-1]
    assert last == f"RuntimeError: {MASK} {MASK} {MASK} {MASK} {MASK} guest"
    assert tracebacks.mask("a\x00b") == "ab"


def test_a_long_traceback_keeps_its_end_and_says_what_was_cut() -> None:
    text = "".join(f"line {i}\n" for i in range(5000))
    kept = cut(text, 1024)
    assert len(kept.encode()) <= 1024
    note, rest = kept.split("\n", 1)
    assert note.startswith("[… ") and note.endswith(" earlier bytes of this traceback cut …]")
    cut_bytes = int(note.split()[1])
    assert cut_bytes + len(rest.encode()) == len(text.encode())
    assert rest.startswith("line ") and rest.endswith("line 4999\n")
    assert cut("short\n", 1024) == "short\n"


def test_a_cut_inside_a_character_keeps_valid_text() -> None:
    kept = cut("é" * 4000, 1024)
    assert len(kept.encode()) <= 1024
    assert kept.endswith("é")


def test_the_limit_bounds_a_huge_message() -> None:
    def huge() -> None:
        raise ValueError("x" * 100_000)

    text = Tracebacks(2048).format(_worker_calls(huge))
    assert text is not None and len(text.encode()) <= 2048
    assert text.endswith("x\n")

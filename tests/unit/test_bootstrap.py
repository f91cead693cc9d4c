"""The composition root: named resources built once on first use, closed newest first; what
is given is used and left to its owner."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor.bootstrap import Container, ProcessRole
from conveyor.errors import UnknownResourceError
from conveyor.registry import Registry
from tests import stack
from tests.unit.support import RecordingAnnouncer, RecordingEnqueuer

SETTINGS = stack.test_settings(database_url="sqlite://", broker_url="stub://", redis_url=None)


class Closable:
    """A resource that records when it was closed (into a shared list)."""

    def __init__(self, name: str, closed: list[str], *, fail: bool = False) -> None:
        self.name = name
        self.closed_into = closed
        self.fail = fail

    def close(self) -> None:
        self.closed_into.append(self.name)
        if self.fail:
            raise RuntimeError(f"{self.name} would not close")


@pytest.fixture
def closed() -> list[str]:
    return []


@pytest.fixture
def container() -> Iterator[Container]:
    container = Container(SETTINGS, ProcessRole.WORKER, registry=Registry())
    yield container
    container.close()


def test_a_resource_is_built_on_first_use_and_then_shared(container: Container) -> None:
    built: list[Container] = []

    def factory(c: Container) -> object:
        built.append(c)
        return object()

    container.register("thing", factory)
    assert built == [] and not container.is_built("resource:thing")
    first = container.resource("thing")
    assert container.resource("thing") is first
    assert built == [container]


def test_resources_given_to_the_constructor_are_registered_too() -> None:
    with Container(SETTINGS, ProcessRole.WORKER, resources={"answer": lambda c: 42}) as container:
        assert container.resource("answer") == 42


def test_many_threads_asking_at_once_get_one_instance(container: Container) -> None:
    calls = 0
    ready = threading.Barrier(16)

    def slow_factory(c: Container) -> object:
        nonlocal calls
        calls += 1
        return object()

    container.register("shared", slow_factory)
    seen: list[Any] = []

    def ask() -> None:
        ready.wait(5)
        seen.append(container.resource("shared"))

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert calls == 1
    assert len(seen) == 16 and all(item is seen[0] for item in seen)


def test_a_factory_may_use_other_resources(container: Container) -> None:
    container.register("settings_copy", lambda c: c.settings)
    container.register("wrapper", lambda c: ("wrapped", c.resource("settings_copy")))
    assert container.resource("wrapper") == ("wrapped", SETTINGS)


def test_an_unregistered_name_raises_unknown_resource_error_listing_the_known_ones(
    container: Container,
) -> None:
    with pytest.raises(UnknownResourceError, match="registered: none"):
        container.resource("mail")
    container.register("store", lambda c: object())
    container.register("cache", lambda c: object())
    with pytest.raises(UnknownResourceError, match=r"'mail'.*registered: cache, store"):
        container.resource("mail")


def test_a_name_cannot_be_registered_twice(container: Container) -> None:
    container.register("store", lambda c: object())
    with pytest.raises(ValueError, match="already registered"):
        container.register("store", lambda c: object())


def test_resources_are_closed_newest_first(container: Container, closed: list[str]) -> None:
    for name in ("a", "b", "c"):
        container.register(name, lambda c, name=name: Closable(name, closed))
    container.resource("b")
    container.resource("a")
    container.resource("c")
    container.close()
    assert closed == ["c", "a", "b"]  # the reverse of the order they were built in


def test_a_resource_that_fails_to_close_does_not_stop_the_others(
    container: Container, closed: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    container.register("first", lambda c: Closable("first", closed))
    container.register("broken", lambda c: Closable("broken", closed, fail=True))
    container.resource("first")
    container.resource("broken")
    container.close()
    assert closed == ["broken", "first"]
    assert "could not close resource:broken cleanly" in caplog.text


def test_a_resource_without_close_is_simply_dropped(
    container: Container, caplog: pytest.LogCaptureFixture
) -> None:
    container.register("plain", lambda c: [1, 2, 3])
    assert container.resource("plain") == [1, 2, 3]
    container.close()
    assert "could not close" not in caplog.text  # nothing was tried on it


def test_closing_twice_closes_once(container: Container, closed: list[str]) -> None:
    container.register("a", lambda c: Closable("a", closed))
    container.resource("a")
    container.close()
    container.close()
    assert closed == ["a"]


def test_nothing_is_built_after_close(container: Container) -> None:
    container.register("late", lambda c: object())
    container.close()
    with pytest.raises(RuntimeError, match="closed"):
        container.resource("late")


def test_a_resource_built_on_the_job_loop_is_closed_before_the_loop(
    container: Container, closed: list[str]
) -> None:
    class OnLoop(Closable):
        def __init__(self, c: Container) -> None:
            super().__init__("client", closed)
            self.loop = c.loop  # the loop is built first, so it closes last
            self.loop_was_running: bool | None = None

        def close(self) -> None:
            super().close()
            self.loop_was_running = self.loop.loop.is_running()

    container.register("client", OnLoop)
    client = container.resource("client")
    container.close()
    assert client.loop_was_running is True
    assert client.loop.loop.is_closed()


class ClosableEnqueuer(RecordingEnqueuer):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_given_objects_are_used_and_left_to_their_owner() -> None:
    enqueuer = ClosableEnqueuer()
    announcer = RecordingAnnouncer()
    with Container(
        SETTINGS,
        ProcessRole.WORKER,
        enqueuer=enqueuer,
        announcements=announcer,  # type: ignore[arg-type]
    ) as container:
        assert container.enqueuer is enqueuer
        assert container.announcements is announcer
        assert container.is_built("enqueuer") and not container.is_built("http")
    assert enqueuer.closed is False


def test_the_shared_http_client_is_built_once_on_the_containers_loop(
    container: Container,
) -> None:
    client = container.http
    assert container.http is client
    assert container.is_built("loop")

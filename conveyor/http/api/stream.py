"""The job's event stream (server-sent events): its history, then live transitions.

Streams on a job share its feed (`conveyor.feeds`): each event is read once per web process,
however many streams send it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from aiohttp import ClientConnectionResetError, web

from conveyor import logs
from conveyor.feeds import (
    EVENTS_PAGE,
    UNAVAILABLE,
    Cursor,
    Event,
    Feeds,
    JobFeed,
    encode,
    retry_delay,
)
from conveyor.http.api.params import JOB_ID, bounded_int, is_finished, job_id_of, routes
from conveyor.http.keys import CONTAINER, HELD, STREAMS, USER
from conveyor.http.routes import EVENT_STREAM, Answer, Parameter
from conveyor.http.runtime import run_db
from conveyor.models import Role, Scope
from conveyor.services import jobs

logger = logging.getLogger(__name__)

SSE_KEEPALIVE_SECONDS = 15.0
MAX_EVENT_ID = 2**63 - 1


@routes.get(
    "/jobs/{job_id}/events",
    role=Role.MEMBER,
    scope=Scope.JOBS_READ,
    summary="Stream the job's events (server-sent events)",
    parameters=[
        JOB_ID,
        Parameter(
            "Last-Event-ID",
            "header",
            {"type": "string", "pattern": "^[0-9]+$"},
            "Resume after this event id (EventSource sends it when it reconnects)",
        ),
    ],
    answers={
        200: Answer(
            "The history, then live `status` and `progress` events until the job finishes",
            content_type=EVENT_STREAM,
            schema={"type": "string"},
        )
    },
    errors={
        404: "No such job (or another member's)",
        429: "The user holds as many open event streams as allowed "
        "(`CONVEYOR_MAX_STREAMS_PER_USER` per web process); retry after Retry-After seconds",
    },
)
async def job_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the job's history (after `Last-Event-ID`), then live transitions
    and progress until it finishes. A finished job's stream ends once its history is sent,
    also for a client that reconnects with the last id it saw. A user may hold
    `max_streams_per_user` streams open at once (429 past that)."""
    viewer = request[USER]
    state = request.config_dict
    container = state[CONTAINER]
    job = await run_db(state, jobs.get, job_id_of(request), viewer)
    last = request.headers.get("Last-Event-ID", "")
    cursor = Cursor(bounded_int(last, 0, MAX_EVENT_ID) if last else 0)
    feeds = container.feeds
    request[HELD] = "stream"  # open for as long as the job runs: not a request latency
    async with feeds.streaming(viewer.id, limit=container.settings.max_streams_per_user):
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
                "X-Request-Id": logs.request_id.get() or "",
            }
        )
        await response.prepare(request)
        # Started: nothing may answer with an error any more, so the stream ends here.
        task = asyncio.current_task()
        assert task is not None
        streams = state[STREAMS]
        streams.add(task)
        try:
            if is_finished(job):  # its history is all there is: no need to follow it
                await _send(response, feeds, job.id, cursor, None)
            else:
                async with feeds.following(job.id, cursor) as feed:
                    await _send(response, feeds, job.id, cursor, feed)
            await response.write_eof()
        except (ConnectionResetError, ClientConnectionResetError):
            pass  # the client went away
        except asyncio.CancelledError:
            if task not in streams:  # the web process stops (see end_streams)
                task.uncancel()
                with contextlib.suppress(ConnectionResetError, ClientConnectionResetError):
                    await response.write_eof()
                return response
            raise
        except Exception:  # a reconnecting client resumes after the last event it received
            logger.exception(
                "the event stream of job %s failed", job.id, extra=logs.job_fields(job.id)
            )
        finally:
            streams.discard(task)
    return response


async def end_streams(app: web.Application) -> None:
    """End every open event stream, at once, when the web process stops (aiohttp would
    otherwise wait for them); a reconnecting client resumes after its last event, on another
    web process or this one once it is back."""
    streams = app[STREAMS]
    for task in list(streams):
        streams.discard(task)
        task.cancel()


async def _send(
    response: web.StreamResponse,
    feeds: Feeds,
    job_id: uuid.UUID,
    cursor: Cursor,
    feed: JobFeed | None,
) -> None:
    """Send every event after `cursor` until the final status: from the job's feed, or from
    the database what the feed does not hold (the history; a stream that fell behind). An
    unavailable database is waited out, with keep-alives meanwhile."""
    loop = asyncio.get_running_loop()
    keep_alive_at = loop.time() + SSE_KEEPALIVE_SECONDS
    failures = 0
    while True:
        events = feed.since(cursor.at) if feed is not None else None
        if events is None:
            try:
                page = await feeds.call(jobs.events_after, job_id, cursor.at, EVENTS_PAGE)
            except UNAVAILABLE:
                failures += 1
            else:
                failures = 0
                events = [encode(job_id, event) for event in page]
        if events:
            if await _write(response, events, cursor):
                return
            keep_alive_at = loop.time() + SSE_KEEPALIVE_SECONDS
            continue
        if not failures and (feed is None or feed.finished or feed.failed):
            return  # the client has every event of a job that will have no more
        # Wait for the feed's next read (or before reading the database again).
        pause = retry_delay(failures) if failures else SSE_KEEPALIVE_SECONDS
        pause = min(pause, max(keep_alive_at - loop.time(), 0.0))
        if feed is None:
            await asyncio.sleep(pause)
        else:
            await feed.changed(pause)
        if loop.time() >= keep_alive_at:
            await response.write(b": keep-alive\n\n")
            keep_alive_at = loop.time() + SSE_KEEPALIVE_SECONDS


async def _write(response: web.StreamResponse, events: list[Event], cursor: Cursor) -> bool:
    """Send the events, up to the final status if it is among them; True if it was."""
    end = next((i + 1 for i, event in enumerate(events) if event.final), len(events))
    await response.write(b"".join(event.data for event in events[:end]))
    cursor.at = events[end - 1].id
    return events[end - 1].final

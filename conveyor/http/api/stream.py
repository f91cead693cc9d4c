"""The job's event stream (server-sent events): its history, then live transitions."""

from __future__ import annotations

import asyncio
import json
import uuid

from aiohttp import ClientConnectionResetError, web

from conveyor import logs
from conveyor.http.api.params import JOB_ID, bounded_int, is_finished, job_id_of, routes
from conveyor.http.keys import CONTAINER, USER
from conveyor.http.routes import EVENT_STREAM, Answer, Parameter
from conveyor.http.runtime import run_db
from conveyor.models import JobEventKind
from conveyor.models.job import FINISHED
from conveyor.services import jobs

SSE_KEEPALIVE_SECONDS = 15.0
EVENTS_PAGE = 500
MAX_EVENT_ID = 2**63 - 1


@routes.get(
    "/jobs/{job_id}/events",
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
    errors={404: "No such job (or another member's)"},
)
async def job_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the job's history (after `Last-Event-ID`), then live transitions
    and progress until it finishes. A finished job's stream ends once its history is sent,
    also for a client that reconnects with the last id it saw."""
    viewer = request[USER]
    job = await run_db(request.config_dict, jobs.get, job_id_of(request), viewer)
    last = request.headers.get("Last-Event-ID", "")
    after = bounded_int(last, 0, MAX_EVENT_ID) if last else 0
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            "X-Request-Id": logs.request_id.get() or "",
        }
    )
    await response.prepare(request)
    try:
        cursor = [after]
        async with request.config_dict[CONTAINER].announcements.listen(job.id) as notices:
            while not await _send_events(request, response, job.id, cursor):
                if is_finished(job):
                    break  # it had finished before the stream began: its history is sent
                try:
                    await asyncio.wait_for(notices.take(), SSE_KEEPALIVE_SECONDS)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
        await response.write_eof()
    except (ConnectionResetError, ClientConnectionResetError):
        pass  # the client went away
    return response


async def _send_events(
    request: web.Request, response: web.StreamResponse, job_id: uuid.UUID, after: list[int]
) -> bool:
    """Send every event after `after[0]` (advancing it); True once a final status was sent."""
    while True:
        page = await run_db(request.config_dict, jobs.events_after, job_id, after[0], EVENTS_PAGE)
        for event in page:
            after[0] = event.id
            data = {
                "job_id": str(job_id),
                "kind": event.kind,
                "status": event.status,
                "attempt": event.attempt,
                "progress": event.progress,
                "message": event.message,
                "at": event.at.isoformat(),
            }
            await response.write(
                f"id: {event.id}\nevent: {event.kind}\ndata: {json.dumps(data)}\n\n".encode()
            )
            if event.kind == JobEventKind.STATUS and event.status in FINISHED:
                return True
        if len(page) < EVENTS_PAGE:
            return False

"""The clients of `bench/chaos.py`: a steady stream of submissions over the web processes,
retried as a real client would, each recorded before its first try."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import uuid
from collections import Counter
from typing import Any

import aiohttp

from bench.chaos_platform import Platform
from bench.chaos_tally import Submission

#: The job mix: shares of echo, short sleep and delayed echo; the share with a key.
ECHO, SLEEP = 0.5, 0.4  # the rest: echo with delay_seconds
KEYED = 0.5
SLEEP_SECONDS, SLEEP_STEPS, DELAY_SECONDS = (0.1, 0.5), (2, 10), (1.0, 5.0)
#: How long a keyed submission is retried before its client gives up on it.
RETRY_FOR = 60.0


class Clients:
    """`clients` HTTP clients submitting at `rate` jobs/s in all, over the web processes in
    turn; every submission is recorded before its first try."""

    def __init__(self, platform: Platform, *, clients: int, rate: float, seed: int) -> None:
        self.clients, self.rate, self.seed = clients, rate, seed
        self.urls = platform.urls
        self.headers = {
            "Authorization": f"Bearer {platform.token}",
            "Content-Type": "application/json",
        }
        self.records: list[Submission] = []
        self.answers: Counter[str] = Counter()  # tries by HTTP status or exception
        self.seq = itertools.count(1)
        self.tag = f"{platform.broker}-{uuid.uuid4().hex[:8]}"
        self.in_flight = 0

    def new(self, rng: random.Random) -> tuple[Submission, bytes]:
        seq = next(self.seq)
        key = f"chaos-{self.tag}-{seq}" if rng.random() < KEYED else None
        draw = rng.random()
        document: dict[str, Any]
        if draw < ECHO:
            document = {"type": "system.echo", "payload": {"chaos": self.tag, "seq": seq}}
        elif draw < ECHO + SLEEP:
            seconds = round(rng.uniform(*SLEEP_SECONDS), 2)
            payload = {"seconds": seconds, "steps": rng.randint(*SLEEP_STEPS)}
            document = {"type": "system.sleep", "payload": payload}
        else:
            document = {
                "type": "system.echo",
                "payload": {"chaos": self.tag, "seq": seq},
                "delay_seconds": round(rng.uniform(*DELAY_SECONDS), 2),
            }
        sub = Submission(seq=seq, job_type=document["type"], key=key)
        self.records.append(sub)
        return sub, json.dumps(document).encode()

    async def client(self, index: int, until: float) -> None:
        """Submit at this client's share of the rate until `until` (no burst after a stall)."""
        loop = asyncio.get_running_loop()
        rng = random.Random(f"{self.seed}-{index}")  # the same mix on each broker
        interval = self.clients / self.rate
        next_at = loop.time() + rng.uniform(0, interval)
        timeout = aiohttp.ClientTimeout(total=20, sock_connect=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for turn in itertools.count(index):
                await asyncio.sleep(max(next_at - loop.time(), 0))
                if loop.time() >= until:
                    return
                next_at = max(next_at + interval, loop.time() - interval)
                sub, body = self.new(rng)
                self.in_flight += 1
                try:
                    await self.submit(session, sub, body, turn)
                finally:
                    self.in_flight -= 1

    async def submit(
        self, session: aiohttp.ClientSession, sub: Submission, body: bytes, turn: int
    ) -> None:
        """POST until a 202; a keyed submission is tried again (on the other web process)
        after no answer, a 5xx or a 409, for up to RETRY_FOR s. Without a key, only a try
        that could not connect (or got a 429) is repeated: a try that got no answer may have
        created the job, and so may one that got a 5xx."""
        loop = asyncio.get_running_loop()
        headers = dict(self.headers)
        if sub.key is not None:
            headers["Idempotency-Key"] = sub.key
        give_up = loop.time() + RETRY_FOR
        while True:
            url = self.urls[(turn + sub.tries) % len(self.urls)]
            sub.tries += 1
            delay = min(0.1 * 2**sub.tries, 2.0) * random.uniform(0.5, 1.0)
            answer = "interrupted"
            try:
                async with session.post(f"{url}/v1/jobs", data=body, headers=headers) as r:
                    raw, status = await r.read(), r.status
                    retry_after = r.headers.get("Retry-After", "")
            except aiohttp.ClientConnectorError as exc:  # not connected: nothing was sent
                sub.connection_errors += 1
                answer = type(exc).__name__
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                sub.connection_errors += 1
                answer = type(exc).__name__
                if sub.key is None:
                    return
            else:
                answer = str(status)
                if status in (200, 202):
                    try:
                        sub.job_id = uuid.UUID(json.loads(raw)["id"])
                    except (ValueError, KeyError, TypeError):
                        sub.rejected = f"{status} without a job id: {raw[:200]!r}"
                    return
                if status == 409 and sub.key is not None:
                    sub.conflicts += 1
                elif status >= 500:
                    sub.server_errors += 1
                    if sub.key is None:
                        return
                    with contextlib.suppress(ValueError):
                        delay = min(float(retry_after), 5.0)
                elif status != 429:
                    sub.rejected = f"{status} {raw[:300].decode(errors='replace')}"
                    return
            finally:
                sub.last_error = answer
                self.answers[answer] += 1
            if loop.time() + delay > give_up:
                return
            await asyncio.sleep(delay)

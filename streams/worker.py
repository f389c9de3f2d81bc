"""The long-running worker processes; each connects, runs its handler loop, and stops on SIGTERM.

Until their issues land, the decider, agent, sender and projector have no handlers: they
prove they can reach the broker, report ready, and shut down cleanly. They deliberately do not
join consumer groups yet, so no offset is committed past a command nobody handled.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Final, Literal

from streams import kafka

type WorkerName = Literal["decider", "agent", "sender", "projector"]
WORKERS: Final[tuple[WorkerName, ...]] = ("decider", "agent", "sender", "projector")

log = logging.getLogger("zapflow.worker")


class WorkerStartError(Exception):
    """The worker could not reach what it needs."""


async def run_worker(name: WorkerName, bootstrap_servers: str, connect_timeout_s: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    problem = await kafka.probe(bootstrap_servers, connect_timeout_s)
    if problem is not None:
        raise WorkerStartError(f"{name}: broker {bootstrap_servers} unreachable: {problem}")
    log.info("%s ready (no handlers registered yet)", name)
    await stop.wait()
    log.info("%s stopped", name)

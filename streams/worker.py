"""The long-running worker processes; each connects, runs its handler loop, and stops on SIGTERM.

The decider runs `streams.decider`, the projector `projections.runner`, the agent
`streams.agent`, the sender `streams.sender`, the registration saga `streams.registrations`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING, Final, Literal

from streams import kafka

if TYPE_CHECKING:  # imported by the agent alone: the other workers need no model SDK
    from streams.agent import AgentOptions
    from streams.llm import Model
    from streams.registrations import RegistrationOptions
    from streams.sender import SenderOptions

type WorkerName = Literal["decider", "agent", "sender", "registrations", "projector"]
WORKERS: Final[tuple[WorkerName, ...]] = ("decider", "agent", "sender", "registrations",
                                          "projector")  # fmt: skip

log = logging.getLogger("zapflow.worker")


class WorkerStartError(Exception):
    """The worker could not reach what it needs."""


async def run_worker(
    name: WorkerName,
    bootstrap_servers: str,
    connect_timeout_s: float,
    *,
    instance_id: str | None = None,
    session_timeout_ms: int = 10_000,
    database_url: str | None = None,
    llm: Model | None = None,
    reader_url: str | None = None,
    agent_options: AgentOptions | None = None,
    sender_options: SenderOptions | None = None,
    secret_key: bytes | None = None,
    registration_options: RegistrationOptions | None = None,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    problem = await kafka.probe(bootstrap_servers, connect_timeout_s)
    if problem is not None:
        raise WorkerStartError(f"{name}: broker {bootstrap_servers} unreachable: {problem}")
    if name == "decider":
        from streams.decider import run_decider

        log.info("decider starting (group join can take seconds on the dev broker)")
        await run_decider(
            bootstrap_servers, stop, instance_id=instance_id, session_timeout_ms=session_timeout_ms
        )
    elif name == "agent":
        from streams.agent import AgentOptions, run_agent

        log.info("agent starting (%s)", "LLM" if llm is not None else "offline FAQ agent")
        await run_agent(bootstrap_servers, stop, llm, reader_url, agent_options or AgentOptions())
    elif name == "projector":
        from projections.runner import run_projector

        if database_url is None:
            raise WorkerStartError("projector: no database URL given")
        log.info("projector starting")
        await run_projector(bootstrap_servers, database_url, stop)
    elif name == "sender":
        from streams.sender import run_sender

        if database_url is None or sender_options is None or secret_key is None:
            raise WorkerStartError("sender: needs a database URL, options and the secret key")
        log.info("sender starting (Twilio API: %s)", sender_options.twilio_api_url or "Twilio")
        await run_sender(bootstrap_servers, database_url, secret_key, sender_options, stop)
    elif name == "registrations":
        from streams.registrations import RegistrationOptions, run_registrations

        log.info("registrations starting")
        await run_registrations(
            bootstrap_servers, stop, registration_options or RegistrationOptions()
        )
    else:
        raise WorkerStartError(f"no such worker: {name}")
    log.info("%s stopped", name)

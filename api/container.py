"""What the API needs at run time, built once in the lifespan and handed to routes by dependency."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import asyncpg
from aiokafka import AIOKafkaProducer
from fastapi import Depends, Request


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """The settings the API reads, resolved by the composition root."""

    database_url: str
    bootstrap_servers: str
    public_url: str
    trust_proxy: bool = False
    probe_timeout_s: float = 2.0


@dataclass(frozen=True, slots=True)
class Container:
    config: ApiConfig
    pool: asyncpg.Pool
    producer: AIOKafkaProducer


def get_container(request: Request) -> Container:
    container: Container = request.app.state.container
    return container


ContainerDep = Annotated[Container, Depends(get_container)]

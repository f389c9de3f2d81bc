"""Every command type the decider accepts, with the upcasters for their older versions."""

from __future__ import annotations

from typing import Final

from events.registry import Message, Registry

COMMAND_REGISTRY: Final[Registry[Message]] = Registry(
    models={},
    upcasters={},
)

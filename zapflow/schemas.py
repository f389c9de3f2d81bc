"""`zapflow schemas export`: JSON Schema of every envelope, event and command, written to disk."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import orjson
from pydantic import BaseModel

from commands.catalog import COMMAND_REGISTRY
from events.catalog import EVENT_REGISTRY
from events.envelope import CommandEnvelope, EventEnvelope
from events.registry import Message, Registry

JSON_DIR: Final = Path(__file__).resolve().parent.parent / "schemas" / "json"


def _render(model: type[BaseModel]) -> str:
    schema = model.model_json_schema(mode="serialization")
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n"


def _of(registry: Registry[Message], folder: str) -> dict[str, str]:
    return {
        f"{folder}/{name}.v{registry.version_of(name)}.json": _render(model)
        for name, model in registry.models.items()
    }


def render_all() -> dict[str, str]:
    """Relative path → schema text, for everything the code defines today."""
    return {
        "envelopes/event-envelope.json": _render(EventEnvelope),
        "envelopes/command-envelope.json": _render(CommandEnvelope),
        **_of(EVENT_REGISTRY, "events"),
        **_of(COMMAND_REGISTRY, "commands"),
    }


def drift(out_dir: Path = JSON_DIR) -> list[str]:
    """What differs between the code and the committed schemas (empty when in sync)."""
    expected = render_all()
    on_disk = {str(p.relative_to(out_dir)): p for p in out_dir.rglob("*.json")}
    problems = [f"missing: {name}" for name in sorted(expected.keys() - on_disk.keys())]
    problems += [f"stale: {name}" for name in sorted(on_disk.keys() - expected.keys())]
    problems += [
        f"changed: {name}"
        for name in sorted(expected.keys() & on_disk.keys())
        if on_disk[name].read_text() != expected[name]
    ]
    return problems


def export(out_dir: Path = JSON_DIR) -> list[str]:
    """Write every schema and remove stale ones; returns the paths written."""
    expected = render_all()
    for stale in out_dir.rglob("*.json"):
        if str(stale.relative_to(out_dir)) not in expected:
            stale.unlink()
    for name, text in expected.items():
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return sorted(expected)

"""Committed JSON Schemas match the code, and the drift check notices every kind of drift."""

from __future__ import annotations

from pathlib import Path

import pytest

from zapflow import schemas

pytestmark = pytest.mark.unit


def test_committed_schemas_match_the_code() -> None:
    assert schemas.drift() == [], "run `make schemas` (zapflow schemas export) and commit"


def test_every_registered_type_has_a_schema() -> None:
    rendered = schemas.render_all()
    assert "events/CommandRejected.v1.json" in rendered
    assert {"envelopes/event-envelope.json", "envelopes/command-envelope.json"} <= set(rendered)


def test_drift_reports_changed_missing_and_stale_files(tmp_path: Path) -> None:
    schemas.export(tmp_path)
    assert schemas.drift(tmp_path) == []
    (tmp_path / "events" / "CommandRejected.v1.json").write_text("{}\n")
    (tmp_path / "envelopes" / "event-envelope.json").unlink()
    (tmp_path / "events" / "Retired.v1.json").write_text("{}\n")
    assert schemas.drift(tmp_path) == [
        "missing: envelopes/event-envelope.json",
        "stale: events/Retired.v1.json",
        "changed: events/CommandRejected.v1.json",
    ]
    schemas.export(tmp_path)
    assert schemas.drift(tmp_path) == []

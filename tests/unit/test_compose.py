"""docker-compose.yml is a valid Compose file whose app services run real zapflow commands.

Checked without a Docker engine: the document against the Compose specification's JSON schema
(vendored as compose-spec.json from compose-spec/compose-spec, schema/compose-spec.json at
commit 170098ba07d9f53c383a41bfd4c5166b0a4529a6), each built service's command against the CLI
parser, and the wiring the topology relies on (pinned images, start order).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from jsonschema import Draft7Validator

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA_FILE = Path(__file__).with_name("compose-spec.json")
APP_SERVICES = frozenset({"api", "decider", "agent", "sender", "registrations", "projector"})
PINNED_TAG = re.compile(r"v?\d+\.\d+(\.\d+)?([.-][\w.-]+)?")

type Document = dict[str, Any]


@pytest.fixture(scope="module")
def compose() -> Document:
    document = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return cast(Document, document)


@pytest.fixture(scope="module")
def services(compose: Document) -> dict[str, Document]:
    return cast(dict[str, Document], compose["services"])


@pytest.fixture(scope="module")
def validator() -> Any:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def schema_errors(validator: Any, document: Document) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def build_parser() -> argparse.ArgumentParser:
    # Imported by name so this module type-checks while the CLI is still being written;
    # the contract: zapflow.cli.build_parser() -> argparse.ArgumentParser.
    cli = importlib.import_module("zapflow.cli")
    factory = cast(Callable[[], argparse.ArgumentParser], cli.build_parser)
    parser = factory()
    assert isinstance(parser, argparse.ArgumentParser)
    return parser


def dependencies(service: Document) -> dict[str, str]:
    """depends_on in either syntax, as {target: condition}."""
    depends_on: list[str] | dict[str, Document] = service.get("depends_on", {})
    if isinstance(depends_on, list):
        return dict.fromkeys(depends_on, "service_started")
    return {
        name: str(spec.get("condition", "service_started")) for name, spec in depends_on.items()
    }


def image_tag(image: str) -> str | None:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def test_compose_file_matches_the_compose_specification(compose: Document, validator: Any) -> None:
    assert schema_errors(validator, compose) == []


def test_obsolete_version_key_is_absent(compose: Document) -> None:
    assert "version" not in compose


def _ports_not_a_list(document: Document) -> None:
    document["services"]["api"]["ports"] = 12


def _unknown_top_level_key(document: Document) -> None:
    document["servces"] = {}


def _unknown_service_key(document: Document) -> None:
    document["services"]["decider"]["comand"] = ["zapflow", "worker", "decider"]


def _bad_depends_on_condition(document: Document) -> None:
    document["services"]["sender"]["depends_on"] = {"migrate": {"condition": 7}}


@pytest.mark.parametrize(
    "break_document",
    [_ports_not_a_list, _unknown_top_level_key, _unknown_service_key, _bad_depends_on_condition],
)
def test_schema_rejects_a_broken_copy(
    compose: Document, validator: Any, break_document: Callable[[Document], None]
) -> None:
    broken = copy.deepcopy(compose)
    break_document(broken)
    assert schema_errors(validator, broken) != []


def test_built_services_are_exactly_the_app_services_and_migrate(
    services: dict[str, Document],
) -> None:
    built = {name for name, service in services.items() if "build" in service}
    assert built == APP_SERVICES | {"migrate"}


def test_every_built_service_runs_a_zapflow_cli_command(services: dict[str, Document]) -> None:
    parser = build_parser()
    for name, service in services.items():
        if "build" not in service:
            continue
        argv = service.get("command")
        assert isinstance(argv, list), f"{name}: command must be an exec-form list"
        assert argv[0] == "zapflow", f"{name}: {argv}"
        try:
            parser.parse_args([str(arg) for arg in argv[1:]])
        except (SystemExit, argparse.ArgumentError) as error:
            pytest.fail(f"{name}: `{' '.join(argv)}` is not a zapflow command ({error!r})")


def test_cli_parser_rejects_an_unknown_worker() -> None:
    # Proves the check above can fail: the parser does not accept anything.
    with pytest.raises((SystemExit, argparse.ArgumentError)):
        build_parser().parse_args(["worker", "no-such-worker"])


def test_every_image_is_pinned_to_a_version(services: dict[str, Document]) -> None:
    for name, service in services.items():
        if "image" not in service:
            continue
        tag = image_tag(str(service["image"]))
        assert tag is not None, f"{name}: {service['image']} has no tag"
        assert tag != "latest", f"{name}: {service['image']}"
        assert PINNED_TAG.fullmatch(tag), f"{name}: {service['image']} is not a version"


def test_redpanda_image_is_pinned(services: dict[str, Document]) -> None:
    image = str(services["redpanda"]["image"])
    assert image.startswith("docker.redpanda.com/redpandadata/redpanda:")
    tag = image_tag(image)
    assert tag is not None
    assert PINNED_TAG.fullmatch(tag)


def test_redpanda_runs_in_dev_container_mode(services: dict[str, Document]) -> None:
    command = services["redpanda"]["command"]
    argv = command if isinstance(command, list) else str(command).split()
    assert "dev-container" in argv
    assert argv[argv.index("dev-container") - 1] == "--mode"


def test_every_dependency_exists(services: dict[str, Document]) -> None:
    for name, service in services.items():
        missing = set(dependencies(service)) - set(services)
        assert not missing, f"{name} depends on unknown services {sorted(missing)}"


def test_app_services_wait_for_a_successful_migrate(services: dict[str, Document]) -> None:
    for name in sorted(APP_SERVICES):
        conditions = dependencies(services[name])
        assert conditions.get("migrate") == "service_completed_successfully", name


def test_migrate_waits_for_healthy_broker_and_database(services: dict[str, Document]) -> None:
    conditions = dependencies(services["migrate"])
    assert conditions == {"redpanda": "service_healthy", "postgres": "service_healthy"}
    assert "restart" not in services["migrate"] or services["migrate"]["restart"] == "no"


def test_every_bind_mounted_host_path_exists(services: dict[str, Document]) -> None:
    """E.g. PostgreSQL's init scripts, which create the query API's role with its password."""
    mounts = [
        volume.split(":", 1)[0]
        for service in services.values()
        for volume in service.get("volumes", [])
        if isinstance(volume, str) and volume.startswith(".")
    ]
    assert "./deploy/postgres" in mounts
    for host_path in mounts:
        assert (ROOT / host_path).exists(), host_path

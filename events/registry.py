"""Type registries: map a type name and schema version to its current model, upcasting old payloads.

A registry is built from literal dicts by the module that owns the types (no registration by
import side effect). Old versions are never rewritten in the log; they are read through
upcasters, each of which lifts a payload from version N to N+1.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from events.envelope import Payload

type Upcaster = Callable[[Payload], Payload]


class Message(BaseModel):
    """Base of every domain event and command payload model: frozen, strict about extra fields.

    Subclasses declare `type: Literal["Name"] = "Name"` and `schema_version: Literal[N] = N`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    type: str
    schema_version: int
    _envelope_fields: ClassVar[frozenset[str]] = frozenset({"type", "schema_version"})

    def payload(self) -> Payload:
        """The model's fields as they travel in an envelope's `payload` (JSON mode)."""
        return self.model_dump(mode="json", exclude=set(self._envelope_fields))


class UnknownType(LookupError):
    """A record names a type this registry does not know (newer producer, or a typo)."""


class UnsupportedVersion(LookupError):
    """A record's schema version is newer than the code, or no upcaster path reaches it."""


def _default_of(model: type[Message], name: str) -> Any:
    field = model.model_fields.get(name)
    if field is None or field.default is None:
        raise TypeError(f"{model.__name__} must declare a literal default for {name!r}")
    return field.default


# Not slotted: `Registry[Message](...)` sets __orig_class__, which a slotted frozen class breaks.
@dataclass(frozen=True)
class Registry[M: Message]:
    """The types one side of the log knows, plus the upcasters for their older versions."""

    models: Mapping[str, type[M]]
    upcasters: Mapping[tuple[str, int], Upcaster]

    _versions: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        versions = {}
        for name, model in self.models.items():
            if _default_of(model, "type") != name:
                raise TypeError(f"{model.__name__}.type must default to {name!r}")
            version = _default_of(model, "schema_version")
            if not isinstance(version, int):
                raise TypeError(f"{model.__name__}.schema_version must default to an int")
            versions[name] = version
        # Read once here: pydantic's `model_fields` is rebuilt on every access.
        object.__setattr__(self, "_versions", versions)

    def version_of(self, type_name: str) -> int:
        self._model(type_name)  # UnknownType for a name this registry does not know
        return self._versions[type_name]

    def decode(self, type_name: str, schema_version: int, payload: Payload) -> M:
        """The current model for a stored payload, upcasting it from `schema_version`."""
        model, current = self._model(type_name), self.version_of(type_name)
        if schema_version > current:
            raise UnsupportedVersion(f"{type_name} v{schema_version} is newer than v{current}")
        version = schema_version
        while version < current:
            upcast = self.upcasters.get((type_name, version))
            if upcast is None:
                raise UnsupportedVersion(f"no upcaster for {type_name} v{version}")
            payload, version = upcast(payload), version + 1
        return model.model_validate({**payload, "type": type_name, "schema_version": current})

    def _model(self, type_name: str) -> type[M]:
        try:
            return self.models[type_name]
        except KeyError:
            raise UnknownType(type_name) from None

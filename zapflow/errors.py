"""The error every launcher raises for bad configuration: one clear line naming the setting."""

from __future__ import annotations


class ConfigurationError(Exception):
    """A setting's value cannot work (unreachable service, port in use, bad URL)."""

    def __init__(self, setting: str, value: str, problem: str) -> None:
        super().__init__(f"{setting}={value}: {problem}")
        self.setting = setting

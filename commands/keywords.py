"""Opt-out and opt-in keywords (English, Portuguese, Spanish), matched on the whole message."""

from __future__ import annotations

import unicodedata
from typing import Final, Literal

OPT_OUT: Final = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "PARAR", "SAIR", "CANCELAR", "BAJA"}
)
OPT_IN: Final = frozenset({"START", "YES", "UNSTOP", "VOLTAR"})
_LONGEST: Final = 2 * max(len(word) for word in OPT_OUT | OPT_IN) + 8  # room for spaces, "!"


def _normalise(body: str) -> str:
    stripped = unicodedata.normalize("NFKD", body.strip().strip(".!¡").strip())
    return "".join(c for c in stripped if not unicodedata.combining(c)).upper()


def keyword(body: str) -> tuple[Literal["opt_out", "opt_in"], str] | None:
    """The consent keyword the whole message is, if any: "Stop!" counts, "stop it" does not."""
    if len(body) > _LONGEST:
        return None  # most messages: no need to normalise the whole text
    word = _normalise(body)
    if word in OPT_OUT:
        return "opt_out", word
    if word in OPT_IN:
        return "opt_in", word
    return None

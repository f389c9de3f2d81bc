"""Estimated cost of an agent turn from its token counts: list prices in USD per million tokens.

An estimate for the tenant's dashboard and budget, not an invoice: prices change and contracts
differ. A model matches the longest known name it starts with (dated snapshots such as
`gpt-4o-mini-2024-07-18` price as `gpt-4o-mini`); an unknown model (a local Ollama model, the
offline FAQ agent) has no estimate rather than a wrong one.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final

MILLION: Final = Decimal(1_000_000)
PRICES: Final[dict[str, tuple[Decimal, Decimal]]] = {
    # model prefix: (input, output) USD per 1M tokens, OpenAI list prices as of 2026-11
    "gpt-4o-mini": (Decimal("0.15"), Decimal("0.60")),
    "gpt-4o": (Decimal("2.50"), Decimal("10.00")),
    "gpt-4.1-nano": (Decimal("0.10"), Decimal("0.40")),
    "gpt-4.1-mini": (Decimal("0.40"), Decimal("1.60")),
    "gpt-4.1": (Decimal("2.00"), Decimal("8.00")),
    "gpt-3.5-turbo": (Decimal("0.50"), Decimal("1.50")),
}
_BY_LENGTH: Final = sorted(PRICES, key=len, reverse=True)


def estimate(model: str, tokens_in: int, tokens_out: int) -> Decimal | None:
    """USD for a turn, or None when the model's price is not known."""
    for prefix in _BY_LENGTH:
        if model.startswith(prefix):
            price_in, price_out = PRICES[prefix]
            return (price_in * tokens_in + price_out * tokens_out) / MILLION
    return None

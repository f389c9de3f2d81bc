"""Cost estimates of agent turns: the longest matching model name wins; unknown means unknown."""

from __future__ import annotations

from decimal import Decimal

import pytest

from projections.agent_costs import estimate


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o-mini", Decimal("0.75")),  # not priced as gpt-4o (12.50)
        ("gpt-4o-mini-2024-07-18", Decimal("0.75")),
        ("gpt-4o-2024-08-06", Decimal("12.50")),
        ("gpt-4.1-mini", Decimal("2.00")),  # not priced as gpt-4.1 (10.00)
        ("gpt-4.1", Decimal("10.00")),
        ("llama3.1:8b", None),
        ("faq", None),
    ],
)
def test_a_million_tokens_each_way(model: str, expected: Decimal | None) -> None:
    assert estimate(model, 1_000_000, 1_000_000) == expected


def test_no_tokens_cost_nothing() -> None:
    assert estimate("gpt-4o", 0, 0) == 0

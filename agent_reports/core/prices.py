"""What a request cost in USD: a configured price, else the `genai-prices` table, else unknown.

The table is matched on the model name and the server's base URL, so a local server that
calls its model "gpt-4o-mini" is not billed at OpenAI's price: its cost is unknown until a
price is configured (`AGENT_REPORTS_LLM_PRICE_PER_MILLION=input,output`, 0,0 for a free
local server). Unknown is `None`, never 0.0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

log = logging.getLogger(__name__)

OPENAI_URL = "https://api.openai.com/v1"


def parse_prices(text: str | None, name: str = "AGENT_REPORTS_LLM_PRICE_PER_MILLION"):
    """`"0.15,0.60"` (USD per million input and output tokens) as a pair, or None."""
    if not text:
        return None
    try:
        prompt, completion = (float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(
            f"{name} must be two numbers, USD per million input and output tokens "
            f"(e.g. 0.15,0.60), not {text!r}"
        ) from None
    if prompt < 0 or completion < 0:
        raise ValueError(f"{name} must not be negative, got {text!r}")
    return prompt, completion


@dataclass(frozen=True)
class Pricing:
    """How one model is priced: `per_million` (input, output) USD, or None when unknown."""

    model: str
    per_million: tuple[float, float] | None
    source: str  # "configured", "genai-prices" or "unknown"

    @property
    def known(self) -> bool:
        return self.per_million is not None

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        if self.per_million is None:
            return None
        prompt, completion = self.per_million
        return round((prompt_tokens * prompt + completion_tokens * completion) / 1e6, 8)


def pricing(
    model: str, base_url: str | None, configured: tuple[float, float] | None = None
) -> Pricing:
    """The configured price wins; then the maintained table for this model and server."""
    if configured is not None:
        return Pricing(model, configured, "configured")
    table = _table_price(model, (base_url or OPENAI_URL).rstrip("/"))
    return Pricing(model, table, "genai-prices" if table else "unknown")


@lru_cache(maxsize=64)
def _table_price(model: str, base_url: str) -> tuple[float, float] | None:
    """USD per million tokens from genai-prices, or None when it has no match."""
    from genai_prices import Usage, calc_price

    try:
        million = calc_price(
            Usage(input_tokens=1_000_000, output_tokens=0), model, provider_api_url=base_url
        ).total_price
        output = calc_price(
            Usage(input_tokens=0, output_tokens=1_000_000), model, provider_api_url=base_url
        ).total_price
    except LookupError:
        return None
    except Exception as error:  # a price table problem must not stop a report
        log.warning("genai-prices could not price %s: %s", model, type(error).__name__)
        return None
    return float(million), float(output)

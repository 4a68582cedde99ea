"""Prices per model: genai-prices (the data pydantic-ai itself uses) plus user overrides, strict by default.

genai-prices matches model names loosely (`claude-sonnet-4-5-bogus` is priced as `claude-sonnet-4-5`, a dated
snapshot as its family). Strict mode accepts only a match whose model id is the requested one, or an override:
a misspelt model is refused before anything runs instead of being billed at a neighbour's price.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from importlib.metadata import version

from genai_prices import Usage as GenaiUsage
from genai_prices import calc_price

from flujo_dagster.errors import ConfigurationError, PricingNotConfiguredError

__all__ = [
    "FREE",
    "GENAI_PRICES_SOURCE",
    "OFFLINE_PROVIDERS",
    "OFFLINE_SOURCE",
    "ModelPricing",
    "Price",
    "PriceBook",
    "TokenUsage",
    "prices_from_table",
    "split_model",
]

GENAI_PRICES_SOURCE = f"genai-prices {version('genai-prices')}"
"""The price source reported for prices found in genai-prices (with the installed data's version)."""
MILLION = Decimal(1_000_000)
OFFLINE_PROVIDERS = ("function", "test")
"""The `provider` part of the ids of pydantic-ai's offline models (`FunctionModel`, `TestModel`): they never call
a provider, so without a declared price they cost $0."""
OFFLINE_SOURCE = "offline"
"""The price source of an offline model's price, declared or not."""


def _decimal(value: object, what: str) -> Decimal:
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation as exc:
        raise ConfigurationError(f"{what} must be a number of US dollars, got {value!r}") from exc
    if not number.is_finite() or number < 0:
        raise ConfigurationError(f"{what} must be a finite number >= 0, got {value!r}")
    return number


@dataclass(frozen=True, kw_only=True)
class Price:
    """US dollars per million tokens: an override, or the declared price of an offline model.

    `cached_input_per_mtok` (input tokens read from the provider's cache) defaults to the input price.
    """

    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_per_mtok", _decimal(self.input_per_mtok, "input_per_mtok"))
        object.__setattr__(self, "output_per_mtok", _decimal(self.output_per_mtok, "output_per_mtok"))
        if self.cached_input_per_mtok is not None:
            cached = _decimal(self.cached_input_per_mtok, "cached_input_per_mtok")
            object.__setattr__(self, "cached_input_per_mtok", cached)


FREE = Price(input_per_mtok=Decimal(0), output_per_mtok=Decimal(0))
"""The price of an offline model that declares none."""


@dataclass(frozen=True, kw_only=True)
class TokenUsage:
    """Tokens of one or more model requests (pydantic-ai's `RunUsage` counts)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


@dataclass(frozen=True, kw_only=True)
class ModelPricing:
    """How one `provider:model` is priced: from genai-prices (`source` names its version), an override, or
    the declared price of an offline model."""

    model: str
    source: str
    price: Price | None = None
    provider_id: str | None = field(default=None, repr=False)
    model_id: str | None = field(default=None, repr=False)

    def cost(self, usage: TokenUsage) -> Decimal:
        """The cost in US dollars of `usage` on this model."""
        if self.price is not None:
            cached = min(usage.cache_read_tokens, usage.input_tokens)
            cached_price = self.price.cached_input_per_mtok
            cached_price = self.price.input_per_mtok if cached_price is None else cached_price
            total = (
                (usage.input_tokens - cached) * self.price.input_per_mtok
                + cached * cached_price
                + usage.output_tokens * self.price.output_per_mtok
            )
            return total / MILLION
        assert self.model_id is not None
        genai = GenaiUsage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens or None,
            cache_write_tokens=usage.cache_write_tokens or None,
        )
        return calc_price(genai, self.model_id, provider_id=self.provider_id).total_price


def split_model(model: str) -> tuple[str | None, str]:
    """(`provider`, `model name`) of `provider:model`; no provider when there is no colon."""
    provider, sep, name = model.partition(":")
    return (provider, name) if sep else (None, model)


class PriceBook:
    """Resolves `provider:model` names to prices: declared prices of offline models, overrides, then genai-prices;
    an offline model (`OFFLINE_PROVIDERS`) that none of them prices costs $0 (`FREE`, source `offline`).

    `strict=True` (the default) accepts a genai-prices match only when its model id is exactly the requested
    name; `strict=False` accepts genai-prices' loose matches (validation reports that as a warning).
    """

    def __init__(
        self,
        *,
        overrides: Mapping[str, Price] | None = None,
        offline: Mapping[str, Price] | None = None,
        strict: bool = True,
    ) -> None:
        self.overrides: dict[str, Price] = dict(overrides or {})
        self.offline: dict[str, Price] = dict(offline or {})
        self.strict = strict

    def __eq__(self, other: object) -> bool:
        """Equal books price every model alike (several `build_definitions` calls then share one)."""
        if not isinstance(other, PriceBook):
            return NotImplemented
        return (self.overrides, self.offline, self.strict) == (other.overrides, other.offline, other.strict)

    __hash__ = None  # type: ignore[assignment]  # mutable: equal by value, not hashable

    def resolve(self, model: str) -> ModelPricing | None:
        """The pricing of `model`, or None when it has none here (see `why_unpriced`)."""
        if model in self.offline:
            return ModelPricing(model=model, source=OFFLINE_SOURCE, price=self.offline[model])
        if model in self.overrides:
            return ModelPricing(model=model, source="override", price=self.overrides[model])
        provider, name = split_model(model)
        if provider in OFFLINE_PROVIDERS:
            return ModelPricing(model=model, source=OFFLINE_SOURCE, price=FREE)
        try:
            found = calc_price(GenaiUsage(), name, provider_id=provider)
        except LookupError:
            return None
        if self.strict and found.model.id != name:
            return None
        return ModelPricing(model=model, source=GENAI_PRICES_SOURCE, provider_id=found.provider.id, model_id=name)

    def why_unpriced(self, model: str) -> str:
        """Why `resolve(model)` found nothing, in words."""
        provider, name = split_model(model)
        try:
            found = calc_price(GenaiUsage(), name, provider_id=provider)
        except LookupError as exc:
            return f"{GENAI_PRICES_SOURCE} does not know it ({exc})"
        return (
            f"{GENAI_PRICES_SOURCE} matches it only loosely, as {found.provider.id}:{found.model.id}; strict pricing "
            "accepts only the exact model id"
        )

    def require(self, model: str, *, where: str) -> ModelPricing:
        """`resolve(model)`, or `PricingNotConfiguredError` naming `where` (a step path) and the fix."""
        pricing = self.resolve(model)
        if pricing is None:
            raise PricingNotConfiguredError(unpriced_message(model, where, self.why_unpriced(model)))
        return pricing


def unpriced_message(model: str, where: str, why: str) -> str:
    """The one message for a model without a price, at definition time and at run time."""
    return (
        f"model {model!r} at {where} has no price: {why}. Add an override, e.g. in pyproject.toml "
        f'[tool.flujo_dagster.pricing] "{model}" = {{ input_per_mtok = ..., output_per_mtok = ... }} '
        f'or build_definitions(prices={{"{model}": Price(input_per_mtok=..., output_per_mtok=...)}})'
    )


def prices_from_table(table: Mapping[str, object], *, source: str) -> dict[str, Price]:
    """Overrides from a `[tool.flujo_dagster.pricing]`-shaped mapping: `"provider:model" = {input_per_mtok = ...,
    output_per_mtok = ..., cached_input_per_mtok = ...}`. `source` (a file) is named in errors."""
    prices: dict[str, Price] = {}
    for model, entry in table.items():
        if not isinstance(entry, Mapping):
            raise ConfigurationError(f"{source}: pricing for {model!r} must be a table, got {entry!r}")
        unknown = set(entry) - {"input_per_mtok", "output_per_mtok", "cached_input_per_mtok"}
        missing = {"input_per_mtok", "output_per_mtok"} - set(entry)
        if unknown or missing:
            raise ConfigurationError(
                f"{source}: pricing for {model!r} needs input_per_mtok and output_per_mtok (and may have "
                f"cached_input_per_mtok); missing {sorted(missing)}, unknown {sorted(unknown)}"
            )
        prices[model] = Price(
            input_per_mtok=entry["input_per_mtok"],
            output_per_mtok=entry["output_per_mtok"],
            cached_input_per_mtok=entry.get("cached_input_per_mtok"),
        )
    return prices

"""An orders briefing: a pipeline that reads another Dagster asset (`orders`, a plain `@asset`), uses a resource
in a step and in an agent's tool (`customers`), and runs every morning on a schedule."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import date
from pathlib import Path

from dagster import AssetKey, ConfigurableResource, asset
from pydantic import BaseModel, Field
from pydantic_ai import Agent, RunContext

from flujo_dagster import Pipeline, Schedule, agent_step, step

DATA = Path(__file__).parent / "data"


class Order(BaseModel):
    id: str
    customer_id: str
    amount_usd: float = Field(ge=0)
    placed_on: date


class Customer(BaseModel):
    id: str
    name: str
    segment: str


class CustomerTotal(BaseModel):
    customer_id: str
    name: str
    orders: int
    amount_usd: float


class CustomerDirectory(ConfigurableResource):  # type: ignore[misc]
    """Looks customers up: a JSON file here, a CRM client in a real deployment (configurable in the Launchpad)."""

    path: str = str(DATA / "customers.json")

    def lookup(self, customer_id: str) -> Customer | None:
        """The customer with this id, or None."""
        for raw in json.loads(Path(self.path).read_text()):
            if raw["id"] == customer_id:
                return Customer.model_validate(raw)
        return None


@asset(group_name="sales", description="Yesterday's orders, as the order system exports them.")
def orders() -> list[dict[str, object]]:
    """A plain Dagster asset (stored by Dagster's default IO manager), loaded by the briefing as `list[Order]`."""
    rows: list[dict[str, object]] = json.loads((DATA / "orders.json").read_text())
    return rows


class Briefing(BaseModel):
    """The briefing's context: `team` and `top` are the run's inputs, `orders` comes from the upstream asset, and
    the steps write the rest."""

    team: str = Field(description="Who reads the briefing, e.g. 'EMEA sales'.")
    top: int = Field(default=3, ge=1, le=20, description="How many customers the briefing names at most.")
    orders: list[Order] = Field(description="Yesterday's orders, read from the `orders` asset.")
    totals: list[CustomerTotal] = Field(default_factory=list, description="Order totals per customer, largest first.")
    briefing: str | None = Field(default=None, description="The sales team's morning briefing.")


@step
def totals(orders: list[Order], top: int, customers: CustomerDirectory) -> list[CustomerTotal]:
    """Total the orders per customer, named through the `customers` resource; the `top` largest."""
    amounts: dict[str, list[float]] = defaultdict(list)
    for order in orders:
        amounts[order.customer_id].append(order.amount_usd)
    rows = []
    for customer_id, values in amounts.items():
        found = customers.lookup(customer_id)
        rows.append(
            CustomerTotal(
                customer_id=customer_id,
                name=found.name if found else "(unknown)",
                orders=len(values),
                amount_usd=round(sum(values), 2),
            )
        )
    return sorted(rows, key=lambda r: -r.amount_usd)[:top]


briefer = Agent(
    "openai:gpt-5-mini",
    deps_type=CustomerDirectory,
    defer_model_check=True,
    instructions="Write a three-line sales briefing. Look up the top customer's segment before you write.",
)


@briefer.tool
def lookup_customer(ctx: RunContext[CustomerDirectory], customer_id: str) -> str:
    """The customer's name and segment."""
    found = ctx.deps.lookup(customer_id)
    return f"{found.name} ({found.segment})" if found else f"no customer {customer_id}"


def directory(customers: CustomerDirectory) -> CustomerDirectory:
    """The briefing agent's deps: the `customers` resource, which its `lookup_customer` tool uses."""
    return customers


briefing = agent_step(
    "briefing",
    agent=briefer,
    prompt="Brief {team} on yesterday's order totals per customer:\n{totals}",
    deps=directory,
)

orders_briefing = Pipeline(
    "orders_briefing",
    context=Briefing,
    upstream={"orders": AssetKey(["orders"])},
    steps=totals >> briefing,
    assets=["totals", "briefing"],
    description="Morning sales briefing from the orders asset: totals per customer, then an agent's summary.",
    # every day at 06:00 UTC; stopped until switched on in the UI (Automation)
    schedule=Schedule(cron="0 6 * * *", inputs={"team": "sales"}),
)

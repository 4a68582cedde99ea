"""A park is not a failure: a gate parks by yielding none of its outputs (the run ends SUCCESS, the steps after it
are skipped), and every op that joins or fans in and stands after a gate holds (yields nothing) while a gate
before it is parked in this run. Dagster runs a fan-in when any of its sources produced, and collects a dynamic
output with the elements that produced: without the hold, a join, a barrier, a Map's collect or the final
context would run with a parked branch's inputs missing."""

from __future__ import annotations

from collections.abc import Mapping

from dagster import MetadataValue, OpExecutionContext

# not exported by name in Dagster 1.13; the only way to attach metadata to an event outside a step's own output
from dagster._core.events import EngineEventData

from flujo_dagster.names import AWAITING_PREFIX, HELD_KEY, PARKED_RUN_TAG, STEP_PATH

__all__ = ["ParkWatch", "gate_node", "parked_gates"]


def gate_node(gate_id: str) -> str:
    """The node name of a gate id in tags (`each__review[i3]` -> `each__review`)."""
    return gate_id.split("[", 1)[0]


def parked_gates(tags: Mapping[str, str], run_id: str) -> list[str]:
    """The ids of the gates parked in run `run_id` (`flujo/awaiting/<gate>=pending` with `flujo/parked_run` naming
    this run: a re-execution inherits its parent's tags)."""
    if tags.get(PARKED_RUN_TAG) != run_id:
        return []
    return [
        k.removeprefix(AWAITING_PREFIX) for k, v in tags.items() if k.startswith(AWAITING_PREFIX) and v == "pending"
    ]


class ParkWatch:
    """The approval gates (node names) upstream of each joining op of one pipeline's graph; filled once the graph
    is built (`gates_before`), read when a joining op runs."""

    def __init__(self) -> None:
        self.gates_before: dict[str, frozenset[str]] = {}

    def holds(self, context: OpExecutionContext, node: str, path: str) -> bool:
        """Whether op `node` must hold: a gate upstream of it is parked in this run (read from the instance: the
        run's own snapshot is from its start). Records why on the op's step, as an engine event."""
        before = self.gates_before.get(node, frozenset())
        if not before:
            return False
        run = context.instance.get_run_by_id(context.run_id) or context.run
        parked = [g for g in parked_gates(run.tags, run.run_id) if gate_node(g) in before]
        if not parked:
            return False
        step_key = context.get_step_execution_context().step.key
        context.instance.report_engine_event(
            f"{path}: held, and the steps after it skipped, while gate {', '.join(parked)} is parked; it runs "
            "when the run is resumed",
            dagster_run=run,
            engine_event_data=EngineEventData(
                metadata={HELD_KEY: MetadataValue.text(", ".join(parked)), STEP_PATH: path}
            ),
            step_key=step_key,
        )
        return True

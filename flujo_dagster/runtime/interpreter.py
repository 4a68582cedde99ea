"""The in-process interpreter: runs any DSL subtree in one process, async, with the semantics of the expanded
ops. Leaves run on the leaf executor (`runtime.leaf`, as the expanded ops' do), branches and loops decide as
the routers and loop gates do (`runtime.control`), parallel branches and map items are awaited together
(`runtime.fanout`), each reused from a checkpoint when the store has one of the same inputs
(`runtime.checkpoints`). It knows nothing of Dagster: it reports each inner step through the `Reporter` protocol."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

from flujo_dagster.dsl.approval import Approval
from flujo_dagster.dsl.control import Branch, Group, Loop, Map, Parallel
from flujo_dagster.dsl.steps import AgentStep, FunctionStep, Step
from flujo_dagster.errors import ConfigurationError, ControlFlowError
from flujo_dagster.names import iteration_path, step_path
from flujo_dagster.runtime.checkpoints import Checkpointer, CheckpointStore
from flujo_dagster.runtime.control import branch_arm, loop_should_exit
from flujo_dagster.runtime.fanout import State, run_map, run_parallel
from flujo_dagster.runtime.injection import Injector
from flujo_dagster.runtime.leaf import AgentRunner, LeafExecutor
from flujo_dagster.runtime.records import Reporter

__all__ = ["Interpreter"]

Rule = Callable[[Step, State, str], Awaitable[None]]


class Interpreter:
    """Runs steps against a state (key -> value), writing typed values back into it; the leaves' resources and
    execution context come from `injector`."""

    def __init__(
        self,
        *,
        fields: Mapping[str, object],
        agents: AgentRunner | None,
        reporter: Reporter | None = None,
        checkpoints: CheckpointStore | None = None,
        injector: Injector | None = None,
    ) -> None:
        self.fields = fields
        self.checkpoints = Checkpointer(checkpoints, fields, reporter)
        self.reporter = self.checkpoints.reporter
        self.leaves = LeafExecutor(fields=fields, agents=agents, reporter=self.reporter, injector=injector)
        self._rules: dict[type[Step], Rule] = {
            FunctionStep: self._leaf,
            AgentStep: self._leaf,
            Loop: self._loop,
            Branch: self._branch,
            Parallel: self._parallel,
            Map: self._map,
            Group: self._group,
            Approval: self._approval,
        }

    async def run(self, steps: Sequence[Step], state: State, path: str) -> None:
        """Run `steps` in order under `path` (the parent's path), updating `state`."""
        for step in steps:
            rule = self._rules.get(type(step))
            if rule is None:
                raise ControlFlowError(f"{path}: the interpreter has no rule for {type(step).__name__}")
            await rule(step, state, step_path(path, step.kind, step.name))

    async def _leaf(self, step: Step, state: State, path: str) -> None:
        state.update((await self.leaves.run(step, state, path)).values)

    async def _approval(self, step: Step, state: State, path: str) -> None:
        raise ConfigurationError(
            f"approval gate {path} cannot run inside one op (it could not pause and resume there); validation "
            "refuses this placement (HITL-NESTED-001)"
        )

    async def _loop(self, step: Step, state: State, path: str) -> None:
        assert isinstance(step, Loop)
        for iteration in range(1, max(step.max_iterations, 1) + 1):
            await self.run(step.body, state, iteration_path(path, iteration))
            if loop_should_exit(step, state, iteration, path):
                return

    async def _branch(self, step: Step, state: State, path: str) -> None:
        assert isinstance(step, Branch)
        _, steps = branch_arm(step, state, path)
        await self.run(steps, state, path)

    async def _parallel(self, step: Step, state: State, path: str) -> None:
        assert isinstance(step, Parallel)
        await run_parallel(
            step, state, path, run=self.run, fields=self.fields, reporter=self.reporter, checkpoints=self.checkpoints
        )

    async def _map(self, step: Step, state: State, path: str) -> None:
        assert isinstance(step, Map)
        await run_map(step, state, path, run=self.run, fields=self.fields, checkpoints=self.checkpoints)

    async def _group(self, step: Step, state: State, path: str) -> None:
        assert isinstance(step, Group)
        await self.run(step.steps, state, path)

"""Every name flujo_dagster writes into Dagster: run tags, metadata keys, op/input/output names, resource keys,
job and sensor names, op kinds, and the step-path convention. The strings live here and nowhere else.

Pure (no dagster, no pydantic_ai): every layer may import it. Tags and metadata keys are namespaced `flujo/`,
never `dagster/`; the few `dagster/` names here are Dagster's own tags that flujo_dagster reads or sets.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Mapping
from enum import StrEnum

__all__ = [
    "RUN_CALLS_TAG",
    "RUN_COST_BAND_TAG",
    "RUN_COST_TAG",
    "RUN_COST_TAGS",
    "RUN_TOKENS_TAG",
    "AFTER_INPUT",
    "AGENT_RUNTIME_KEY",
    "APPROVALS_SENSOR",
    "COSTS_SENSOR",
    "APPROVAL_PREFIX",
    "APPROVAL_SETTINGS_KEY",
    "APPROVALS",
    "APPROVED_OUTPUT",
    "BUNDLE_OUTPUT",
    "AUDIT_GATE",
    "AUDIT_KEY",
    "AUDIT_KIND",
    "AWAITING_PREFIX",
    "BUDGET_LEDGER_KEY",
    "CACHE_HITS",
    "CACHE_READ_TOKENS",
    "CALLS_DIR",
    "CALL_RECORDS",
    "CALL_CACHE_KEY",
    "CHECK_ASSET",
    "CHECK_FAILED",
    "CHECK_RESULT",
    "CHECKPOINTS_DIR",
    "CHECKPOINT_MANIFEST",
    "CONTEXT_KEY",
    "CONTEXT_OP",
    "CONTEXT_CHECK_OP",
    "CONTEXT_OUTPUT",
    "CONTINUE_OUTPUT",
    "COST_USD",
    "DAGSTER_RESERVED_NAMES",
    "DECIDE_JOB",
    "DECISION_OUTPUT",
    "DECISION_PREFIX",
    "DONE_OUTPUT",
    "ERROR_CLASS",
    "ESCALATED_PREFIX",
    "EXIT_OUTPUT",
    "GATE_INPUT",
    "IGNORED_PREFIX",
    "INBOX_PREFIX",
    "INPUTS_OP",
    "INPUT_TOKENS",
    "IO_MANAGER_KEY",
    "LEDGER_ID_PREFIX",
    "INSTANCE_LEDGER_ID_KEY",
    "ITEM_OUTPUT",
    "KEY",
    "KIND",
    "MODEL",
    "MODELS",
    "MODEL_SOURCE",
    "NO_RUN_RETRY_TAG",
    "OpKind",
    "OUTPUT_TOKENS",
    "HELD_KEY",
    "PARKED_RUN_TAG",
    "PARKED_TAG",
    "PARTITION_TAG",
    "PATH",
    "PATH_SEPARATOR",
    "PIPELINE",
    "POOL_PREFIX",
    "PREVIEW",
    "PRICE_BOOK_KEY",
    "PRICE_SOURCE",
    "PRODUCED_BY",
    "READY_OUTPUT",
    "UPSTREAM_INPUT",
    "REJECTED_OUTPUT",
    "REQUESTS",
    "REQUEST_PREFIX",
    "RESULTS_INPUT",
    "RESUMED_BECAUSE_TAG",
    "RESUMED_BY_TAG",
    "RESUME_KEY_TAG",
    "RESUME_NEEDED_TAG",
    "RETRY_BEFORE_PARK_TAG",
    "SAVED_COST_USD",
    "SCHEDULED_TIME_TAG",
    "SENSOR_NAME_TAG",
    "STEPS",
    "STEPS_JSON",
    "STEP_PATH",
    "TOTAL_COST_USD",
    "TOTAL_INPUT_TOKENS",
    "TOTAL_OUTPUT_TOKENS",
    "TYPE",
    "TYPE_CHECK",
    "CONTEXT_CHECK",
    "UPSTREAM_COST_USD",
    "USAGE_UNKNOWN",
    "USER_TAG",
    "VALIDATION_SENSOR",
    "approval",
    "child_path",
    "deps_input",
    "element_path",
    "graph_name",
    "inbox_tag",
    "io_name",
    "item_path",
    "iteration_path",
    "key_path",
    "op_kind",
    "op_name",
    "op_tags",
    "decision_gate",
    "decision_tag",
    "step_key",
    "step_key_parts",
    "step_path",
    "upstream_op",
]

# --- metadata keys on op outputs and asset materializations -------------------------------------------------------
STEP_PATH = "flujo/step_path"
KIND = "flujo/kind"
PIPELINE = "flujo/pipeline"
KEY = "flujo/key"
TYPE = "flujo/type"
MODEL = "flujo/model"
MODEL_SOURCE = "flujo/model_source"
INPUT_TOKENS = "flujo/input_tokens"
OUTPUT_TOKENS = "flujo/output_tokens"
CACHE_READ_TOKENS = "flujo/cache_read_tokens"
REQUESTS = "flujo/requests"
COST_USD = "flujo/cost_usd"
PRICE_SOURCE = "flujo/price_source"
CACHE_HITS = "flujo/cache_hits"
"""On an agent step (and an inline op): model requests served from the call cache (no request, $0)."""
SAVED_COST_USD = "flujo/saved_cost_usd"
"""On an agent step (and an inline op): what its cache hits would have cost, in US dollars."""
USAGE_UNKNOWN = "flujo/usage_unknown"
"""True on a step whose model reported no usage for a response: charged at its reservation (the worst case)."""
PATH = "flujo/path"
CALL_RECORDS = "flujo/call_records"
"""Metadata on an agent op's output (or an inline op's, or a failed step's): the path of the file holding the
record of each agent call it made (docs/calls.md)."""
STEPS = "flujo/steps"
STEPS_JSON = "flujo/steps_json"
ERROR_CLASS = "flujo/error_class"
PREVIEW = "flujo/preview"
TOTAL_COST_USD = "flujo/total_cost_usd"
UPSTREAM_COST_USD = "flujo/upstream_cost_usd"
"""On an asset: the cost of every agent step its value depends on in the run, upstream assets' steps included."""
TOTAL_INPUT_TOKENS = "flujo/total_input_tokens"
TOTAL_OUTPUT_TOKENS = "flujo/total_output_tokens"
MODELS = "flujo/models"
PRODUCED_BY = "flujo/produced_by"
APPROVAL_PREFIX = "flujo/approval/"
"""Metadata `flujo/approval/<field>`: the approval record of the gate that approved a value (see `approval`)."""
APPROVALS = "flujo/approvals"
"""Metadata on an asset materialization: the approval record of every gate that decided upstream of its value (JSON
list, one entry per gate, or per element of a gate in a Map: gate, path, verdict, by, at, comment, payload_hash,
edited, run_id)."""
CHECK_RESULT = "flujo/check_result"
CHECK_ASSET = "flujo/asset"
CHECK_FAILED = "flujo/failed_checks"
AUDIT_KEY = "flujo/audit"
"""Metadata of an audit engine event: its JSON record."""
AUDIT_KIND = "flujo/audit/kind"
AUDIT_GATE = "flujo/audit/gate"


def approval(field: str) -> str:
    """The metadata key `flujo/approval/<field>` (verdict, by, at, payload_hash, ...)."""
    return f"{APPROVAL_PREFIX}{field}"


# --- op kinds ---------------------------------------------------------------------------------------------------------
class OpKind(StrEnum):
    """What an op flujo builds is for: the value of its `flujo/kind` tag. Ops are tagged through `op_tags` and
    kinds read back through `op_kind`, never compared as strings."""

    INPUTS = "inputs"
    """`flujo_inputs`, the first op: validates the run's inputs and emits them as keys."""
    CONTEXT = "context"
    """`flujo_context`, the last op: assembles and validates the final context."""
    UPSTREAM = "upstream"
    """`flujo_upstream_<key>`: validates the value loaded from an upstream asset and emits it as the key."""
    CONTEXT_CHECK = "context_check"
    """After `flujo_context` when the final context is not an asset: reports the `flujo_final_context` check."""
    FUNCTION = "function"
    AGENT = "agent"
    APPROVAL = "approval"
    ROUTER = "branch"
    """A Branch's router: one optional output per case."""
    LOOP_GATE = "loop_gate"
    """A Loop's gate after one iteration: `exit` or `next`."""
    JOIN = "join"
    """After a Branch, Loop, rejectable gate or gated Parallel: forwards the keys written inside."""
    FAN_OUT = "map"
    """A Map expanded into ops: one dynamic output per element."""
    COLLECT = "map_collect"
    """A Map expanded into ops: gathers each element's result."""
    INLINE_STEP = "inline_step"
    INLINE_AGENT = "inline_agent"
    INLINE_LOOP = "inline_loop"
    INLINE_BRANCH = "inline_branch"
    INLINE_PARALLEL = "inline_parallel"
    INLINE_MAP = "inline_map"
    INLINE_GROUP = "inline_group"

    @classmethod
    def inline(cls, node_kind: str) -> OpKind:
        """The kind of the op that runs a DSL node of kind `node_kind` (`loop`, `map`, ...) whole, in one op."""
        return cls(f"inline_{node_kind}")


def op_tags(kind: OpKind, path: str | None = None) -> dict[str, str]:
    """An op's flujo tags: its kind and, when it stands for a step, its step path. Plain strings: Dagster
    serializes op tags and refuses enum members."""
    tags = {KIND: kind.value}
    if path is not None:
        tags[STEP_PATH] = path
    return tags


def op_kind(tags: Mapping[str, str]) -> OpKind | None:
    """The kind of an op from its tags; None for an op flujo did not build."""
    try:
        return OpKind(tags[KIND])
    except (KeyError, ValueError):
        return None


# --- step paths -------------------------------------------------------------------------------------------------------
# A step path says where a node sits, for people: findings, errors, the `flujo/step_path` tag, cost tables and
# approval requests show it (`digest > loop:refine > i2 > agent:draft`). Paths are built here, one segment at a
# time, and never parsed back: code that needs a pipeline or a step carries the object, not its path.
PATH_SEPARATOR = " > "


def step_path(parent: str, kind: str, name: str) -> str:
    """The path of the DSL node `name` of kind `kind` under `parent` (its pipeline's name or its parent node's
    path): `digest > loop:refine`."""
    return f"{parent}{PATH_SEPARATOR}{kind}:{name}"


def child_path(parent: str, label: str) -> str:
    """A labelled part under `parent`: a Parallel's branch (`... > parallel:extras > title`), or a pipeline's
    `schedule` or `partitions`."""
    return f"{parent}{PATH_SEPARATOR}{label}"


def iteration_path(loop: str, iteration: int) -> str:
    """Iteration `iteration` (1-based) of the Loop at path `loop`: `... > loop:refine > i2`."""
    return f"{loop}{PATH_SEPARATOR}i{iteration}"


def item_path(map_path: str, index: int) -> str:
    """Element `index` (0-based) of the Map at `map_path` run inline: `... > map:each > [0]`."""
    return f"{map_path}{PATH_SEPARATOR}[{index}]"


def key_path(pipeline: str, key: str) -> str:
    """A context key of pipeline `pipeline`, as findings about the key name it: `digest > key:topic`."""
    return f"{pipeline}{PATH_SEPARATOR}key:{key}"


def element_path(path: str, mapping_key: str) -> str:
    """The step at `path` inside a Map expanded into ops, for one element (its Dagster mapping key):
    `... > approval:check [i0]`."""
    return f"{path} [{mapping_key}]"


# --- run tags --------------------------------------------------------------------------------------------------------
DECISION_PREFIX = "flujo/decision/"
"""Run tag `flujo/decision/<gate>` (or `flujo/decision/<gate>/<reviewer>` when a quorum is needed): a decision
record (JSON) for gate `<gate>` (its op's node name, plus `[<mapping key>]` inside a Map)."""


def decision_tag(gate: str, reviewer: str | None = None) -> str:
    """The run tag of a decision on `gate`: `flujo/decision/<gate>`, or `flujo/decision/<gate>/<reviewer>`."""
    return f"{DECISION_PREFIX}{gate}" if reviewer is None else f"{DECISION_PREFIX}{gate}/{reviewer}"


def decision_gate(tag: str) -> str | None:
    """The gate a decision tag is for (None for any other tag)."""
    return tag.removeprefix(DECISION_PREFIX).split("/", 1)[0] if tag.startswith(DECISION_PREFIX) else None


AWAITING_PREFIX = "flujo/awaiting/"
"""Run tag `flujo/awaiting/<gate>`: `pending` while the run is parked at the gate, `resumed` once resumed."""
REQUEST_PREFIX = "flujo/request/"
"""Run tag `flujo/request/<gate>`: the request (step path, payload hash, policy, time) of a parked gate."""
ESCALATED_PREFIX = "flujo/escalated/"
"""Run tag `flujo/escalated/<gate>`: when the gate's deadline passed and it was escalated to `escalate_to`."""
IGNORED_PREFIX = "flujo/ignored/"
INBOX_PREFIX = "flujo/inbox/"
"""Run tag `flujo/inbox/<gate>` on a parked run, when `FLUJO_DAGSTER_INBOX_URL` is set: the URL of the gate's page in
the reviewers' web inbox (the run page shows it)."""


def inbox_tag(gate: str) -> str:
    """The run tag linking gate `gate`'s inbox page: `flujo/inbox/<gate>`."""
    return f"{INBOX_PREFIX}{gate}"


PARKED_TAG = "flujo/parked"
"""Run tag `flujo/parked`: `true` while the run waits at a gate, `false` once it was resumed (or never parked)."""
PARKED_RUN_TAG = "flujo/parked_run"
"""Run tag `flujo/parked_run`: the id of the run a gate parked in (a re-execution inherits its parent's tags, so
a join holds only for a park of its own run)."""
HELD_KEY = "flujo/held"
"""Metadata of the engine event a join records when it holds for a gate parked upstream of it (the gate id)."""
RETRY_BEFORE_PARK_TAG = "flujo/retry_before_park"
RESUME_KEY_TAG = "flujo/resume_key"
RESUMED_BY_TAG = "flujo/resumed_by"
"""Run tag of a resume: what launched it (`sensor flujo_approvals`, `flujo-dagster resume`, `resume()`)."""
RESUMED_BECAUSE_TAG = "flujo/resumed_because"
"""Run tag of a resume: the decisions that caused it (`<gate>: <verdict> by <who>`, `; `-separated)."""
RESUME_NEEDED_TAG = "flujo/resume_needed"
"""Run tag of a decided run no sensor can resume (parked outside a code location): the resume key it was reported
for, so that it is reported once per set of decisions."""
USER_TAG = "dagster/user"
NO_RUN_RETRY_TAG = "dagster/retry_on_asset_or_op_failure"
PARTITION_TAG = "dagster/partition"
SCHEDULED_TIME_TAG = ".dagster/scheduled_execution_time"
SENSOR_NAME_TAG = "dagster/sensor_name"
"""Dagster's own: the sensor that launched a run (the UI shows it as "Launched by")."""

# --- concurrency pools ----------------------------------------------------------------------------------------------
POOL_PREFIX = "flujo/"
"""An agent step's default Dagster pool is `flujo/<provider>`."""

# --- resource keys ----------------------------------------------------------------------------------------------------
IO_MANAGER_KEY = "flujo_io_manager"
AGENT_RUNTIME_KEY = "agent_runtime"
PRICE_BOOK_KEY = "price_book"
BUDGET_LEDGER_KEY = "budget_ledger"
CALL_CACHE_KEY = "call_cache"
LEDGER_ID_PREFIX = "flujo/budget_ledger_id/"
"""Instance key-value entry `flujo/budget_ledger_id/<ledger location>`: the id of the budget ledger this instance
charges there (a ledger deleted or replaced since shows another id and is refused)."""
INSTANCE_LEDGER_ID_KEY = "flujo/budget_ledger_id"
"""Instance key-value entry: the id of the instance's own ledger (`InstanceLedger`), wherever it is (a moved
`DAGSTER_HOME`, another PostgreSQL host name for the same database)."""
APPROVAL_SETTINGS_KEY = "approval_settings"

# --- jobs, sensors, checks ------------------------------------------------------------------------------------------
DECIDE_JOB = "flujo_decide"
VALIDATION_SENSOR = "flujo_validation"
APPROVALS_SENSOR = "flujo_approvals"
COSTS_SENSOR = "flujo_costs"

# --- run tags of a finished run's agent usage (docs/costs.md) -------------------------------------------------------
RUN_COST_TAG = COST_USD
"""Run tag `flujo/cost_usd`: the run's own agent cost in US dollars, fixed-point with 6 decimals (`0.000052`)."""
RUN_TOKENS_TAG = "flujo/tokens"
"""Run tag `flujo/tokens`: the run's input plus output tokens, an integer."""
RUN_CALLS_TAG = "flujo/calls"
"""Run tag `flujo/calls`: the run's agent calls (agent step executions), an integer."""
RUN_COST_BAND_TAG = "flujo/cost_band"
"""Run tag `flujo/cost_band`: the run's cost as a band to filter the Runs list by (`0`, `<0.01`, `0.01-0.10`,
`0.10-1`, `1-10`, `>=10`); Dagster's tag filter matches exact values only."""
RUN_COST_TAGS = (RUN_COST_TAG, RUN_TOKENS_TAG, RUN_CALLS_TAG, RUN_COST_BAND_TAG)
"""The run cost tags: measured per run, never inherited by a resume flujo launches."""
TYPE_CHECK = "flujo_type"
"""The name of the check every asset gets: its stored value validates against its declared type."""
CONTEXT_CHECK = "flujo_final_context"
"""The check on a pipeline's last asset (in `assets=` order) that its run's final context validated and was
stored, when the final context is not an asset itself (`Pipeline(context_asset=False)`, the default)."""

# --- ops, inputs and outputs ----------------------------------------------------------------------------------------
INPUTS_OP = "flujo_inputs"
CONTEXT_OP = "flujo_context"
CONTEXT_CHECK_OP = "flujo_context_check"
CONTEXT_OUTPUT = "final_context"
CONTEXT_KEY = "__context__"
"""The key name the final context is stored under (not a field name: pydantic refuses leading underscores)."""
UPSTREAM_INPUT = "flujo_asset"
"""The input of a `flujo_upstream_<key>` op: the upstream asset's value, loaded by that asset's IO manager."""
READY_OUTPUT = "flujo_ready"
"""`flujo_inputs`' Nothing output when it emits no key."""
GATE_INPUT = "flujo_gate"
DECISION_OUTPUT = "decision"
EXIT_OUTPUT = "exit"
CONTINUE_OUTPUT = "next"
AFTER_INPUT = "after"
DONE_OUTPUT = "flujo_done"
BUNDLE_OUTPUT = "flujo_keys"
"""An inline op's one output for the keys it always writes (that are no assets): its value is their names, and
each key's value is stored beside it under the key's own output name (`adapter/ops/flow.py`, `inline_op`)."""
ITEM_OUTPUT = "item"
RESULTS_INPUT = "results"
APPROVED_OUTPUT = "flujo_approved"
REJECTED_OUTPUT = "flujo_rejected"
CHECKPOINTS_DIR = "flujo.checkpoints"
"""The folder, beside an inline op's stored outputs, that holds its branches' and items' checkpoints (the dot
keeps it apart from every output name, which is an identifier)."""
CALLS_DIR = "flujo.calls"
"""The folder, beside an op's stored outputs, that holds the records of its agent calls (one file per try)."""
CHECKPOINT_MANIFEST = "manifest"
"""The file name (before `.json`) of a checkpoint's manifest; its values are `value-<n>`."""

#: Dagster's `DISALLOWED_NAMES` (dagster/_core/definitions/utils.py, 1.13), kept in step by a test.
DAGSTER_RESERVED_NAMES = frozenset(
    {
        "context",
        "conf",
        "config",
        "meta",
        "arg_dict",
        "dict",
        "input_arg_dict",
        "output_arg_dict",
        "int",
        "str",
        "float",
        "bool",
        "input",
        "output",
        "type",
        *keyword.kwlist,
    }
)
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def io_name(key: str) -> str:
    """The input/output name that carries context key `key`: the key itself, with a trailing `_` when
    Dagster reserves the name (rule V-NAME refuses a key whose name would then collide with another's)."""
    name = _UNSAFE.sub("_", key)
    return f"{name}_" if name in DAGSTER_RESERVED_NAMES else name


def upstream_op(key: str) -> str:
    """The node that loads upstream key `key` (and the graph input mapped to its asset): `flujo_upstream_<key>`."""
    return f"flujo_upstream_{io_name(key)}"


def deps_input(index: int) -> str:
    """The Nothing graph input (and `flujo_inputs` input) standing for the pipeline's `index`-th non-data dep."""
    return f"flujo_dep_{index}"


def graph_name(pipeline: str, has_assets: bool) -> str:
    """The graph's name: the pipeline's, or `<pipeline>_graph` inside a graph-backed asset (Dagster wants graph
    and job names distinct in a code location)."""
    return f"{pipeline}_graph" if has_assets else pipeline


def step_key_parts(pipeline: str, has_assets: bool, node: str) -> tuple[str, ...]:
    """The node names from the job down to the top-level node `node` of a pipeline's job: `(node,)`, or
    `(<pipeline>_graph, node)` inside a graph-backed asset. Run config nests `ops` along them."""
    return (graph_name(pipeline, True), node) if has_assets else (node,)


def step_key(pipeline: str, has_assets: bool, node: str) -> str:
    """The step key Dagster gives the top-level node `node` of a pipeline's job."""
    return ".".join(step_key_parts(pipeline, has_assets, node))


def op_name(*path: str) -> str:
    """The op name for a step path (`refine`, `i2`, `draft` -> `refine__i2__draft`)."""
    return "__".join(_UNSAFE.sub("_", part) for part in path)

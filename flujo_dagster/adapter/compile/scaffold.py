"""`dg scaffold defs flujo_dagster.FlujoPipelineComponent PATH`: a `defs.yaml` that `dg check yaml` accepts, with
a placeholder for the required `pipeline` and a comment telling what to put there."""

from __future__ import annotations

from dagster.components import Scaffolder, ScaffoldRequest, scaffold_component
from pydantic import BaseModel, Field

__all__ = ["PLACEHOLDER_PIPELINE", "PipelineScaffoldParams", "PipelineScaffolder"]

PLACEHOLDER_PIPELINE = "my_project.pipelines:my_pipeline"
_COMMENT = (
    "  # Replace with the import path of your flujo_dagster Pipeline ('package.module:attribute'); `dg check defs`\n"
    "  # reports a path that does not import. The other attributes are in docs/component.md.\n"
)


class PipelineScaffoldParams(BaseModel):
    """`dg scaffold defs ... --json-params '{"pipeline": "mypkg.pipelines:digest"}'`."""

    pipeline: str | None = Field(
        default=None, description="Import path of the Pipeline, e.g. 'mypkg.pipelines:digest'."
    )


class PipelineScaffolder(Scaffolder[PipelineScaffoldParams]):
    """Writes the component's `defs.yaml` with `pipeline` set (to the given import path, else to a placeholder
    and a comment saying what to put there)."""

    @classmethod
    def get_scaffold_params(cls) -> type[PipelineScaffoldParams]:
        """The parameters `--json-params` takes."""
        return PipelineScaffoldParams

    def scaffold(self, request: ScaffoldRequest[PipelineScaffoldParams]) -> None:
        """Write the YAML (or, `--format python`, Dagster's Python stub)."""
        given = request.params.pipeline if request.params is not None else None
        scaffold_component(request, yaml_attributes={"pipeline": given or PLACEHOLDER_PIPELINE})
        if given is not None or request.scaffold_format != "yaml":
            return
        path = request.target_path if request.append else request.target_path / "defs.yaml"
        text = path.read_text(encoding="utf-8")
        line = f"  pipeline: {PLACEHOLDER_PIPELINE}\n"
        head, sep, tail = text.rpartition(line)
        if sep:  # the comment goes right above the placeholder this request wrote (the last one when appending)
            path.write_text(head + _COMMENT + line + tail, encoding="utf-8")

"""The code location: every component under `dg_digest/defs/`."""

from pathlib import Path

from dagster import Definitions, definitions, load_from_defs_folder


@definitions
def defs() -> Definitions:
    """Load `defs/` (the digest's `defs.yaml`)."""
    return load_from_defs_folder(path_within_project=Path(__file__).parent)

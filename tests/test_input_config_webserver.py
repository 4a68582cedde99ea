"""Typed run inputs through the real `dagster-webserver`'s GraphQL API (what the Launchpad uses): the example
location's `digest` job shows its inputs typed, with the descriptions and defaults of its context model; the
documented run config is valid; a Launchpad-invalid input is refused (`RunConfigValidationInvalid`) and no run is
created."""

from __future__ import annotations

import json
from typing import Any

from tests.test_input_config import _documented_run_configs
from tests.test_webserver import LOCATION, Webserver, _repository, webserver

__all__ = ["webserver"]  # the module-scoped fixture, booted once for this module

SCHEMA = """
query Schema($selector: PipelineSelector!, $config: RunConfigData!) {
  runConfigSchemaOrError(selector: $selector) {
    __typename
    ... on RunConfigSchema {
      allConfigTypes {
        key
        ... on CompositeConfigType { fields { name description configTypeKey isRequired defaultValueAsJson } }
      }
      isRunConfigValid(runConfigData: $config) { __typename }
    }
  }
}
"""
LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on RunConfigValidationInvalid { errors { message reason } }
  }
}
"""
RUNS = "{ runsOrError { ... on Runs { results { runId } } } }"


def _selector(server: Webserver) -> dict[str, str]:
    return {"repositoryLocationName": LOCATION, "repositoryName": _repository(server)["name"], "pipelineName": "digest"}


def test_the_launchpad_schema_types_the_inputs_with_descriptions_and_defaults(webserver: Webserver) -> None:
    _, documented = _documented_run_configs()
    data = webserver.graphql(SCHEMA, {"selector": _selector(webserver), "config": documented})
    schema = data["runConfigSchemaOrError"]
    assert schema["__typename"] == "RunConfigSchema", schema
    assert schema["isRunConfigValid"]["__typename"] == "PipelineConfigValidationValid"
    (inputs,) = [
        t["fields"]
        for t in schema["allConfigTypes"]
        if {"topic", "max_sources"} <= {f["name"] for f in t.get("fields") or []}
    ]
    fields: dict[str, dict[str, Any]] = {f["name"]: f for f in inputs}
    assert fields["topic"] == {
        "name": "topic",
        "description": "What the digest is about, e.g. 'agents'.",
        "configTypeKey": "String",
        "isRequired": True,
        "defaultValueAsJson": None,
    }
    assert (fields["max_sources"]["configTypeKey"], fields["max_sources"]["isRequired"]) == ("Int", False)
    assert json.loads(fields["max_sources"]["defaultValueAsJson"]) == 3
    assert fields["sources"]["description"] == "Sources ranked for the topic."
    assert fields["sources"]["defaultValueAsJson"] is None  # a step writes it: optional, no default to scaffold


def test_a_launchpad_invalid_input_is_refused_before_a_run_exists(webserver: Webserver) -> None:
    bad = {"ops": {"digest_graph": {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": 3, "max_source": 2}}}}}}}
    params = {"selector": _selector(webserver), "runConfigData": bad}
    launched = webserver.graphql(LAUNCH, {"params": params})["launchRun"]
    assert launched["__typename"] == "RunConfigValidationInvalid", launched
    reasons = sorted(e["reason"] for e in launched["errors"])
    assert reasons == ["FIELD_NOT_DEFINED", "RUNTIME_TYPE_MISMATCH"]
    text = " ".join(e["message"] for e in launched["errors"])
    assert "max_source" in text and "topic" in text
    assert webserver.graphql(RUNS)["runsOrError"]["results"] == []

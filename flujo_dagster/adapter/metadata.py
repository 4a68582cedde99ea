"""Metadata keys flujo_dagster writes (namespaced `flujo/`, never `dagster/`)."""

from __future__ import annotations

__all__ = [
    "CACHE_READ_TOKENS",
    "COST_USD",
    "INPUT_TOKENS",
    "KIND",
    "MODEL",
    "MODEL_SOURCE",
    "OUTPUT_TOKENS",
    "PRICE_SOURCE",
    "PATH",
    "REQUESTS",
    "STEPS",
    "STEPS_JSON",
    "STEP_PATH",
]

STEP_PATH = "flujo/step_path"
KIND = "flujo/kind"
MODEL = "flujo/model"
MODEL_SOURCE = "flujo/model_source"
INPUT_TOKENS = "flujo/input_tokens"
OUTPUT_TOKENS = "flujo/output_tokens"
CACHE_READ_TOKENS = "flujo/cache_read_tokens"
REQUESTS = "flujo/requests"
COST_USD = "flujo/cost_usd"
PRICE_SOURCE = "flujo/price_source"
PATH = "flujo/path"
STEPS = "flujo/steps"
STEPS_JSON = "flujo/steps_json"

"""Tests of flujo_dagster."""

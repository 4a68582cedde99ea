"""An example `dg` project: a research digest declared with `FlujoPipelineComponent`."""

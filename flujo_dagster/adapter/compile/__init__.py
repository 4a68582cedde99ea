"""Code that runs when the definitions load: the compiler, graph building, lineage, translator, partitions,
schedules, `build_definitions` and the dg Component."""

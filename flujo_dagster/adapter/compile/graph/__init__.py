"""Expanding a pipeline's DSL tree into ops and dependencies: one module per node kind (`leaf`, `inline`,
`approval`, `branch`, `loop`, `parallel`, `map`), the dispatcher over a sequence (`sequence`), the wiring they
share (`state`, `gates`) and the whole pipeline with its first and last ops (`build`)."""

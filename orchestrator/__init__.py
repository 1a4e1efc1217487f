"""orchestrator: the `sweep` CLI; search, trials, tracking and ensembles build on it."""

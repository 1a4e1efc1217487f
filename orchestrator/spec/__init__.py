"""Stage 1, the spec: YAML loaded safely, ``--set`` overrides, the pydantic schemas of ``sweep train`` and
``sweep run`` and their search spaces. Imports nothing else of the orchestrator."""

"""orchestrator: the ``sweep`` CLI on top of the pipeline's stages, one subpackage each:
``spec`` → (``schnet_model.data``: data and splits) → ``search`` (trials of k folds) → ``tracking`` (MLflow) →
``ensemble`` (predictions, exports) → ``learn`` (active learning: sweeps and ensembles, round after round);
``cluster`` for multi-node runs. ``train`` (``sweep train``) and ``data_info``
(``sweep data info``) are single commands."""

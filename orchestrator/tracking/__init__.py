"""Stage 4, MLflow: the names the run tree uses (``keys``), trial statuses, the store (no Ray), the Tune callback
that writes the run tree, plots, ``sweep status``/``list``."""

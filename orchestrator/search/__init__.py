"""Stage 3, the search: the ``sweep run`` driver (Ray Tune + Optuna + ASHA), the trainable (one trial = k fold
members) and the two fold layouts (fold actors, the stacked model)."""

"""Active learning: the ensemble explores, selects what to label next, and the models are retrained (``sweep select``,
``sweep learn``)."""

"""Experiments: the grid both tracks run (:mod:`~lorakit.run.grid`) and every method's hyperparameter
search (:mod:`~lorakit.run.search`)."""

"""Experiments: the grid both tracks run (:mod:`~lorakit.run.grid`), every method's hyperparameter search
(:mod:`~lorakit.run.search`), the two tracks' runners (:mod:`~lorakit.run.encoder`, ``lorakit run``;
:mod:`~lorakit.run.causal`, ``lorakit run --model smollm2``), joining runs (:mod:`~lorakit.run.combine`),
the magnitude-variance study (:mod:`~lorakit.run.mv_study`, :mod:`~lorakit.run.mv_grid`), the merge
benchmark against peft (:mod:`~lorakit.run.bench`, with :mod:`~lorakit.run.timing`) and the run's progress
bar (:mod:`~lorakit.run.progress`)."""

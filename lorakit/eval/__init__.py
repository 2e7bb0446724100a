"""Scoring ``W_0 + ΔW`` per task: the encoder track's evaluator with each task's head
(:mod:`~lorakit.eval.encoder`) and its packed CPU path (:mod:`~lorakit.eval.packed_bert`), and the causal
track's greedy decoding scored by exact match (:mod:`~lorakit.eval.causal`)."""

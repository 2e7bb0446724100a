"""Reading what a run wrote: tables and run notes (:mod:`~lorakit.results.tables`), per-example correctness
(:mod:`~lorakit.eval.correctness`), the metrics and their bootstrap (:mod:`~lorakit.results.metrics`), the
papers' claims with CIs and Holm (:mod:`~lorakit.results.claims`), the committed reference runs
(:mod:`~lorakit.results.reference`), figures (:mod:`~lorakit.results.plots`), the causal track's answer kinds
(:mod:`~lorakit.results.causal`) and the magnitude-variance study's report (:mod:`~lorakit.results.mv_study`)."""

"""Training: the loop every fine-tune shares (:mod:`~lorakit.train.loop`), the content-keyed cache
(:mod:`~lorakit.train.cache`), the LoRA ``A`` initialisations with OSRM's cached driver (:mod:`~lorakit.train.inits`),
and each track's adapters: classification with a head (:mod:`~lorakit.train.encoder`, also full fine-tuning)
and the causal LM (:mod:`~lorakit.train.causal`)."""

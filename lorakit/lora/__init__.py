"""LoRA bookkeeping, in one place: the update of one layer, ``ΔW = s·B·A`` with ``s = α/r`` and peft's shapes
(:mod:`~lorakit.lora.update`), PEFT's key names and adapter folders (:mod:`~lorakit.lora.peft`), and measures
of a set of updates: magnitudes, directions, magnitude variance, cosines (:mod:`~lorakit.lora.measures`)."""

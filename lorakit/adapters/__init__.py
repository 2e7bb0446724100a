"""PEFT adapter folders on disk: reading them (:mod:`~lorakit.adapters.sources`), the base model they belong to
(:mod:`~lorakit.adapters.base_model`), a merge's plan and checks (:mod:`~lorakit.adapters.plan`), factors written
back from a merged ΔW (:mod:`~lorakit.adapters.factors`), ``lorakit merge`` itself
(:mod:`~lorakit.adapters.merge_folders`) and ``lorakit diagnose`` (:mod:`~lorakit.adapters.diagnose`)."""

"""Data in: the base models, packaged or from the hub (:mod:`~lorakit.data.models`), task cards and their readers
(:mod:`~lorakit.data.tasks`, :mod:`~lorakit.data.corpora`, :mod:`~lorakit.data.lexicon`, :mod:`~lorakit.data.bigbench`),
deterministic splits (:mod:`~lorakit.data.splits`), the causal track's generative tasks
(:mod:`~lorakit.data.generative`) and the offline export for a GPU machine (:mod:`~lorakit.data.export`)."""

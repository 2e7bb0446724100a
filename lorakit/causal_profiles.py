"""Run profiles of the causal-LM track (``lorakit run --model smollm2``): the same :class:`~lorakit.profiles.Profile`
fields as the encoder track, sized for SmolLM2-135M and greedy generation.

Chosen like the encoder track's (``LORAKIT_PROFILE`` or ``--profile``; ``gpu`` with CUDA, else ``cpu``)
and overridable field by field. The defaults are the six packaged lexicon tasks (:mod:`lorakit.data.lexicon`),
so every profile runs offline; the BIG-bench generative cards (``past_tense``, ``plural``, …) can be
named with ``--tasks`` once ``lorakit data fetch`` has them. ``eval_dtype`` is the dtype the merged
model generates in (``W_0 + ΔW`` is summed in float32 first); ``auto`` is bfloat16 on a CPU with
native bf16 (about 2× faster greedy decoding on SmolLM2 here; a few answers change, the same for
every method of the run, so comparisons stay paired), float32 elsewhere.
"""

from __future__ import annotations

import dataclasses

from .causal import LLAMA_ATTENTION_TARGETS
from .errors import LorakitError
from .profiles import ALL_METHODS, TUNE_GRID, Profile, default_profile_name, get_profile

#: the packaged generative tasks (lemminflect's lexicon), the causal track's default
LEXICON_TASKS = ("verb_past", "verb_gerund", "verb_third_person", "noun_plural", "adj_comparative", "adj_superlative")
#: Llama's MLP projections, an option beside the attention ones (``--target-modules``)
LLAMA_MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")

CAUSAL_PROFILES: dict[str, Profile] = {
    "ci": Profile(
        name="ci", model="smollm2", tasks=("verb_past", "noun_plural"), train_examples=64, val_examples=8,
        test_examples=16, steps=10, batch_size=8, eval_batch_size=32, max_length=32, lr=4e-3,
        target_modules=LLAMA_ATTENTION_TARGETS, lam_grid=(0.5, 1.0), threads=1, inits=("standard", "osrm"),
        methods=("task_arithmetic", "ties", "do"), eval_dtype="auto", extra={"osrm_samples": 32}),
    "cpu": Profile(
        name="cpu", model="smollm2", tasks=LEXICON_TASKS, train_examples=512, val_examples=32, test_examples=80,
        steps=64, batch_size=8, eval_batch_size=64, max_length=32, lr=2e-3, target_modules=LLAMA_ATTENTION_TARGETS,
        lam_grid=(0.3, 0.6, 1.0), lam_extend=1, threads=2, inits=("standard", "osrm"), methods=ALL_METHODS,
        tune_grid=TUNE_GRID, eval_dtype="auto", extra={"osrm_samples": 64}),
    "gpu": Profile(
        name="gpu", model="smollm2", tasks=LEXICON_TASKS, train_examples=None, val_examples=200, test_examples=500,
        steps=500, batch_size=32, eval_batch_size=256, max_length=48, lr=1e-3,
        target_modules=LLAMA_ATTENTION_TARGETS, seeds=(0, 1, 2), lam_grid=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
        lam_extend=2, device="cuda", threads=4, inits=("standard", "osrm"), methods=ALL_METHODS, tune_grid=TUNE_GRID,
        test_curves=True, eval_dtype="float32", extra={"osrm_samples": 100}),
}


def get_causal_profile(name: str | Profile | None = None, model: str | None = None, **overrides) -> Profile:
    """A causal-track profile by name (default as :func:`lorakit.profiles.default_profile_name`), with overrides.

    ``model`` replaces the profile's base model (``smollm2``, or a folder / hub id of another causal LM).
    """
    if isinstance(name, Profile):
        return get_profile(name, **overrides)
    name = name or default_profile_name()
    if name not in CAUSAL_PROFILES:
        raise LorakitError(f"unknown profile {name!r}; choose one of {', '.join(CAUSAL_PROFILES)}")
    profile = CAUSAL_PROFILES[name]
    if model:
        profile = dataclasses.replace(profile, model=model)
    return get_profile(profile, **overrides)

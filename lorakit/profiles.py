"""Run profiles: one set of sizes for CI, a learner's CPU and a GPU.

Choose with the environment variable ``LORAKIT_PROFILE`` (``ci``, ``cpu``, ``gpu``) or the
``profile`` argument that every entry point takes; without either, ``gpu`` when CUDA is
available, else ``cpu``. Every field can be overridden by keyword::

    >>> p = get_profile("ci", train_examples=64)
    >>> (p.name, p.train_examples)
    ('ci', 64)
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import torch

from .errors import LorakitError

ENV_PROFILE = "LORAKIT_PROFILE"
ENV_THREADS = "LORAKIT_THREADS"


@dataclass(frozen=True)
class Profile:
    """Every size that changes how long a run takes.

    Attributes:
        name: profile name.
        model: base model alias or hub id (``minilm`` is packaged and offline).
        tasks: default task names for ``lorakit run``.
        course_tasks: the tasks notebooks 02–05 train and merge live (empty: ``tasks``). ``cpu``
            uses five of its eight, all packaged, so 00–05 fit an hour of one CPU core; the
            reference runs and notebook 06 use ``tasks``. Read it with :func:`lorakit.course.notebook.course_tasks`.
        train_examples / val_examples / test_examples: per-task split sizes (``None`` = all).
        steps: optimisation steps per adapter.
        batch_size: training batch size.
        eval_batch_size: evaluation batch size.
        max_length: tokenizer truncation length.
        lr: learning rate of the LoRA factors and the head.
        rank / alpha / target_modules: LoRA configuration (peft's ``r``, ``lora_alpha``).
        seeds: seeds for training and merging.
        lam_grid: merge coefficients tried on the validation split.
        lam_extend: up to this many extra λ points beyond the grid's edge while the chosen λ sits on
            it (λ/2 below, 1.5 λ above; :func:`lorakit.run.search.edge_extension`).
        device: ``cpu`` or ``cuda``.
        threads: torch CPU threads (``LORAKIT_THREADS`` overrides).
        inits: initialisations of the LoRA A matrix to compare (``standard``, ``osrm``).
        methods: merge methods that ``lorakit run`` reports by default.
        test_curves: also score the test split at every grid point (λ curves on test); otherwise
            λ curves are on validation and test is scored once, at the chosen point.
        task_seeds: ``per_task`` (default): the run's seed is mixed with the task name
            (:func:`lorakit.train.encoder.task_seed`), so every task starts from its own random ``A``.
            ``shared``: every task's adapter is trained with the run's seed itself, so tasks with the
            same label count start from the *identical* ``A`` (what one ``set_seed`` before every
            fine-tune gives with peft). That is an artefact, kept as an option and an ablation: the
            shared ``A`` aligns the adapters' row spaces (mean |cos| of ``lora_A`` 0.22 vs 0.02 with
            per-task seeds) and changes which merge wins (``data/reference/cpu-cpu-2026-11-23*``).
        tune_grid: the second stage of every method's search on validation (the same budget for
            each: :func:`lorakit.run.search.method_refine`). After the λ search, each method tries two
            more points at the chosen λ: TIES / KnOTS / DO-TIES their ``density``, DARE / DO-DARE their
            ``drop_rate``, DO (task-arithmetic directions) its orthogonalisation weight ``gamma``;
            methods with λ alone (task arithmetic, its norm-equalized control) try ``lam`` × the
            two factors. Empty: no second stage (density 0.2, drop rate 0.5, γ 1 as fixed).
        eval_dtype: compute dtype of the evaluator's packed CPU path: ``float32`` (exact to float
            rounding), ``bfloat16``, or ``auto`` (bfloat16 where the CPU multiplies it natively, AMX or
            AVX512-BF16: about 2× faster, a few predictions in a thousand flip;
            :func:`resolve_eval_dtype`). Training is always float32.
        extra: OSRM settings (``osrm_samples``, ``osrm_mode``, ``osrm_max_rows``, ``osrm_seed``).
    """

    name: str
    model: str = "minilm"
    tasks: tuple[str, ...] = ()
    course_tasks: tuple[str, ...] = ()
    train_examples: int | None = 512
    val_examples: int | None = 200
    test_examples: int | None = 500
    steps: int = 64
    batch_size: int = 16
    eval_batch_size: int = 64
    max_length: int = 64
    lr: float = 1e-3
    rank: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = ("query", "value")
    seeds: tuple[int, ...] = (0,)
    lam_grid: tuple[float, ...] = (0.3, 0.5, 0.7, 1.0)
    lam_extend: int = 0
    device: str = "cpu"
    threads: int = 1
    inits: tuple[str, ...] = ("standard",)
    methods: tuple[str, ...] = ("task_arithmetic",)
    test_curves: bool = False
    task_seeds: str = "per_task"
    eval_dtype: str = "float32"
    tune_grid: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def replace(self, **overrides) -> "Profile":
        return with_overrides(self, **overrides)


# every benchmark method: the baselines, then DO-Merging with each base method for the directions
# and ta_normeq, the control that asks whether DO's gain is only equal task-vector norms
ALL_METHODS = ("task_arithmetic", "ties", "dare", "knots", "do", "do_ties", "do_dare", "ta_normeq")
# the second stage of the search on validation (two points per method; see Profile.tune_grid)
TUNE_GRID = {"density": (0.1, 0.4), "drop_rate": (0.3, 0.7), "gamma": (0.3, 3.0), "lam": (0.8, 1.25)}

PROFILES: dict[str, Profile] = {
    "ci": Profile(
        name="ci",
        tasks=("rt_subjectivity", "election_tweets", "reuters_r8"),
        train_examples=192,
        val_examples=64,
        test_examples=128,
        steps=24,
        batch_size=16,
        max_length=48,
        lr=1e-2,
        lam_grid=(0.5, 1.0),
        threads=1,
        inits=("standard", "osrm"),
        methods=("task_arithmetic", "ties", "do"),
    ),
    "cpu": Profile(
        name="cpu",
        # eight packaged tasks (vader_sentiment and trec_questions replaced BIG-bench's multiemo and intent
        # on 2026-12-08: the index no longer serves the bigbench 1.0.0 sdist they came from)
        tasks=("rt_sentiment", "rt_subjectivity", "reuters_r8", "election_tweets", "fine_foods", "newsgroups20",
               "trec_questions", "vader_sentiment"),
        # the notebooks' live sections: five packaged tasks (10 pairs in notebook 03), under an hour for 00-05
        course_tasks=("rt_sentiment", "rt_subjectivity", "reuters_r8", "election_tweets", "newsgroups20"),
        train_examples=512,
        val_examples=128,
        test_examples=400,
        steps=64,
        batch_size=16,
        max_length=64,
        lr=5e-3,
        # λ from 0.1: with six tasks several baselines chose the old grid's bottom edge (0.3)
        lam_grid=(0.1, 0.2, 0.3, 0.5, 0.7, 1.0),
        lam_extend=2,
        # both of a 2-core machine's cores (1.7× faster evaluation than one when idle);
        # LORAKIT_THREADS=1 when something else is busy, since 2 threads then collapse
        threads=2,
        inits=("standard", "osrm"),
        methods=ALL_METHODS,
        tune_grid=TUNE_GRID,
        eval_dtype="auto",
    ),
    "gpu": Profile(
        name="gpu",
        tasks=(
            "rt_sentiment", "rt_subjectivity", "reuters_r8", "election_tweets", "fine_foods",
            "newsgroups20", "vader_sentiment", "privacy_qa", "trec_questions",
        ),
        train_examples=None,
        val_examples=500,
        test_examples=2000,
        steps=1000,
        batch_size=32,
        eval_batch_size=256,
        max_length=128,
        lr=5e-4,
        seeds=(0, 1, 2),
        lam_grid=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
        lam_extend=2,
        device="cuda",
        threads=4,
        inits=("standard", "osrm"),
        methods=ALL_METHODS,
        tune_grid=TUNE_GRID,
        test_curves=True,
    ),
}


def default_profile_name() -> str:
    """``LORAKIT_PROFILE`` if set, else ``gpu`` with CUDA, else ``cpu``."""
    name = os.environ.get(ENV_PROFILE)
    if name:
        return name
    return "gpu" if torch.cuda.is_available() else "cpu"


def with_overrides(profile: Profile, **overrides) -> Profile:
    """A copy of ``profile`` with the given fields replaced (``None`` values are ignored)."""
    known = {f.name for f in dataclasses.fields(Profile)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise LorakitError(f"unknown profile field(s) {unknown}; known: {sorted(known)}")
    clean = {k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items() if v is not None}
    return dataclasses.replace(profile, **clean)


def get_profile(name: str | Profile | None = None, **overrides) -> Profile:
    """Resolve a profile by name (or the default), apply overrides and the thread variable."""
    if isinstance(name, Profile):
        profile = name
    else:
        name = name or default_profile_name()
        if name not in PROFILES:
            raise LorakitError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
        profile = PROFILES[name]
    if os.environ.get(ENV_THREADS) and overrides.get("threads") is None:  # None = not given
        try:
            overrides["threads"] = int(os.environ[ENV_THREADS])
        except ValueError:
            raise LorakitError(f"{ENV_THREADS} must be an integer, got {os.environ[ENV_THREADS]!r}") from None
    profile = with_overrides(profile, **overrides)
    if profile.device == "cuda" and not torch.cuda.is_available():
        profile = dataclasses.replace(profile, device="cpu")
    return profile


#: compute dtypes of the packed path (``Profile.eval_dtype``); ``auto`` resolves with :func:`resolve_eval_dtype`
EVAL_DTYPES = ("float32", "bfloat16", "auto")


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AMX-BF16 or AVX512-BF16) and oneDNN supports it.

    Without native support oneDNN emulates bf16 GEMMs, which is slower than float32, so ``auto``
    keeps float32 there.
    """
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        flags = open("/proc/cpuinfo").read()
    except (OSError, AttributeError, RuntimeError):
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def resolve_eval_dtype(name: str, device: str = "cpu") -> torch.dtype:
    """``float32`` / ``bfloat16`` / ``auto`` → the packed path's compute dtype.

    ``auto``: bfloat16 on a CPU with native bf16 GEMMs (:func:`native_bf16`), else float32. bfloat16
    keeps 8 bits of mantissa: logits move by about 1e-2 and a prediction flips only where two
    classes' logits are that close (on the ``cpu`` profile's tasks, a few in a thousand texts). Every
    method of a run is scored with the same dtype, so paired comparisons stay paired.
    """
    if name not in EVAL_DTYPES:
        raise LorakitError(f"unknown eval_dtype {name!r}; choose one of {', '.join(EVAL_DTYPES)}")
    if name == "auto":
        return torch.bfloat16 if str(device) == "cpu" and native_bf16() else torch.float32
    return torch.bfloat16 if name == "bfloat16" else torch.float32


def apply_threads(profile: Profile) -> None:
    """Set torch's CPU thread count from the profile (2 threads collapse on a busy 2-core box)."""
    if profile.threads and profile.threads > 0:
        torch.set_num_threads(int(profile.threads))


# ----------------------------------------------------------------------------------------------
# The causal-LM track's profiles (``lorakit run --model smollm2``)
# ----------------------------------------------------------------------------------------------
# The same Profile fields as the encoder track's, sized for SmolLM2-135M and greedy generation; chosen
# like the encoder track's (``LORAKIT_PROFILE`` or ``--profile``; ``gpu`` with CUDA, else ``cpu``) and
# overridable field by field. The defaults are the six packaged lexicon tasks (lorakit.data.lexicon), so
# every profile runs offline; the BIG-bench generative cards (``past_tense``, ``plural``, …) can be named
# with ``--tasks`` once ``lorakit data fetch`` has them. ``eval_dtype`` is the dtype the merged model
# generates in (``W_0 + ΔW`` is summed in float32 first); ``auto`` is bfloat16 on a CPU with native bf16
# (about 2× faster greedy decoding on SmolLM2 here), float32 elsewhere.

#: LoRA targets of a Llama-architecture model (SmolLM2, Llama-3): the attention projections; the MLP
#: projections ``gate_proj``, ``up_proj``, ``down_proj`` are an option
LLAMA_ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
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

"""One run from several: the seeds of one benchmark made in parallel processes, or a control added later.

``lorakit run`` writes one ``results.json`` per run. A replicated reference is cheaper made as
several runs side by side (one per core, disjoint seeds) or extended afterwards (a control init or
method on seeds whose adapters are cached); :func:`combine_results` joins them into the one
``results.json`` that every reader (:mod:`lorakit.results.tables`, :mod:`lorakit.results.reference`) expects.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import LorakitError
from ..train.inits import INIT_NAMES
from ..profiles import ALL_METHODS
from ..results.tables import load_results

#: profile settings that must agree for two runs' numbers to be one experiment (seeds, inits and methods may differ)
SAME_SETTINGS = ("model", "train_examples", "val_examples", "test_examples", "steps", "batch_size", "max_length",
                 "lr", "rank", "alpha", "target_modules", "lam_grid", "lam_extend", "task_seeds", "tune_grid",
                 "eval_dtype", "test_curves", "extra")
#: per-task lists with one entry per (init, seed)
PER_RUN_LISTS = ("individual", "floor", "individual_orthogonalized")


def _check_compatible(first: Mapping, other: Mapping, label: str) -> None:
    if list(first["tasks"]) != list(other["tasks"]):
        raise LorakitError(f"run {label} has tasks {list(other['tasks'])}, the first {list(first['tasks'])}; "
                           "combine only runs of the same tasks")
    a, b = first.get("profile_config", {}), other.get("profile_config", {})
    differ = [k for k in SAME_SETTINGS if a.get(k) != b.get(k)]
    if differ:
        raise LorakitError(f"run {label} differs from the first in {differ}; combine only runs of one profile")


def _union(lists: Sequence[Sequence], order: Sequence = ()) -> list:
    """The names of every list once: those in ``order`` (a registry) in its order, then the rest first-seen."""
    seen = list(dict.fromkeys(x for xs in lists for x in xs))
    rank = {name: i for i, name in enumerate(order)}
    return sorted(seen, key=lambda x: (rank.get(x, len(rank)), seen.index(x)))


def _first_per_key(entries: Sequence[Mapping]) -> list:
    kept: dict[tuple, Mapping] = {}
    for e in entries:
        kept.setdefault((e["init"], e["seed"]), e)
    return list(kept.values())


def combine_results(runs: Sequence[Mapping]) -> dict:
    """Join runs of one profile and task list into one results dict.

    Records are keyed by (init, method, seed) and per-task entries (``individual``, ``floor``,
    ``individual_orthogonalized``) by (init, seed); a key present in several runs is kept from the
    first (the same cached adapters give the same numbers) after checking that its test accuracy
    agrees. Seeds, inits and methods are the unions (seeds sorted; inits and methods in the registries'
    order, :data:`lorakit.train.inits.INIT_NAMES` and :data:`lorakit.profiles.ALL_METHODS`, unknown names after); timings add
    up; ``commands`` lists each run's command.
    """
    if not runs:
        raise LorakitError("combine needs at least one run")
    first = runs[0]
    for i, r in enumerate(runs[1:], start=2):
        _check_compatible(first, r, f"#{i}")
    out = {k: v for k, v in first.items() if k not in ("records", "tasks", "timings")}
    records: dict[tuple, dict] = {}
    for r in runs:
        for rec in r["records"]:
            key = (rec["init"], rec["method"], rec["seed"])
            if key in records and abs(records[key]["avg_accuracy"] - rec["avg_accuracy"]) > 1e-9:
                raise LorakitError(f"runs disagree on {key}: accuracy {records[key]['avg_accuracy']} vs "
                                   f"{rec['avg_accuracy']}; were they made with different code or adapters?")
            records.setdefault(key, rec)
    tasks = {}
    for t, info in first["tasks"].items():
        merged = {k: v for k, v in info.items() if k not in PER_RUN_LISTS}
        for key in PER_RUN_LISTS:
            entries = _first_per_key([e for r in runs for e in r["tasks"][t].get(key, [])])
            if entries or key in info:
                merged[key] = entries
        ind = merged.get("individual", [])
        merged["individual_accuracy"] = sum(e["test"] for e in ind) / len(ind) if ind else None
        secs = [e["train_seconds"] for e in ind if e.get("train_seconds") is not None]
        if "train_seconds" in info and secs:  # the causal track's per-task mean training time
            merged["train_seconds"] = sum(secs) / len(secs)
        tasks[t] = merged
    timings: dict[str, float] = {}
    for r in runs:
        for k, v in r.get("timings", {}).items():
            timings[k] = round(timings.get(k, 0.0) + v, 2)
    if all("throughput" in r for r in runs):  # the causal track's generation work: sums, rates recomputed
        work = {k: sum(r["throughput"][k] for r in runs) for k in ("prompts", "new_tokens", "seconds")}
        out["throughput"] = {**work, "seconds": round(work["seconds"], 2),
                             "prompts_per_second": round(work["prompts"] / work["seconds"], 2),
                             "new_tokens_per_second": round(work["new_tokens"] / work["seconds"], 2)}
    out.update({
        "tasks": tasks, "records": list(records.values()), "timings": timings,
        "seeds": sorted(_union([r["seeds"] for r in runs])),
        "inits": _union([r["inits"] for r in runs], INIT_NAMES),
        "methods": _union([r["methods"] for r in runs], ALL_METHODS),
        "adapter_stats": _first_per_key([a for r in runs for a in r.get("adapter_stats", [])]),
        "commands": [r.get("command", "") for r in runs],
        "command": " && ".join(r.get("command", "") for r in runs),
    })
    return out


def combine_run_folders(folders: Sequence[str | os.PathLike]) -> dict:
    """:func:`combine_results` of the ``results.json`` in each folder (in the order given)."""
    missing = [str(f) for f in folders if not (Path(f) / "results.json").is_file()]
    if missing:
        raise LorakitError(f"no results.json in {', '.join(missing)}; give folders that `lorakit run --out` wrote")
    return combine_results([load_results(f) for f in folders])

"""The benchmark's evaluation, old code against new, on the same work in one process.

Builds one :class:`lorakit.eval.encoder.Evaluator` for a profile's tasks and sizes (default: the
``cpu`` profile — six tasks, 128 validation and 400 test texts each, max length 64), gets one
adapter per task and times, interleaved and repeated, two ways of scoring the same list of calls:

* ``old``: a frozen copy (below) of ``Evaluator.score`` and ``lorakit.train.loop.predict`` as they were
  before the packed path (ΔW added in place, a clone per module restored after, HF's padded
  forward on length-sorted batches of ``eval_batch_size`` cut to their longest text, ``no_grad``);
* ``new``: ``Evaluator.score`` as it is now.

The work of one pass is what ``lorakit run`` does for one method with ``test_curves=True``: each
adapter alone on val and test (the normalizer), then for every λ of ``--lams`` the task-arithmetic
merge ``λ Σ_t ΔW_t`` (computed once, untimed, shared by both paths) scored with every task's head
on val and on test. In float32 every accuracy of the two paths must be equal (in bfloat16 a few
predictions in a thousand may flip); an untimed pass also compares
the predictions text by text and counts flips.

Adapters: ``--adapters random`` (default) draws LoRA factors of the profile's shapes (r = 8 on
query/value of every layer) and a head per task with the task's label count; the cost of
evaluation does not depend on what the adapter learned. ``--adapters ci`` trains (or loads from
the cache) real ci-size adapters for the tasks (seconds each) and evaluates them at the chosen
profile's sizes.

    python tools/bench_eval.py --reps 3 --out bench_eval.json
    python tools/bench_eval.py --profile ci --adapters ci --lams 0.5 1.0 --out bench_eval_ci.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from lorakit.eval.encoder import Evaluator
from lorakit.lora.update import LoRAUpdate
from lorakit.profiles import get_profile
from lorakit.results.tables import machine_description
from lorakit.train.encoder import train_adapter
from lorakit.train.loop import TrainedAdapter


# --- the old evaluation, frozen (lorakit.train.loop.predict and Evaluator.score before the packed path) ---

@torch.no_grad()
def old_predict(model, encodings, batch_size: int = 64, device: str = "cpu") -> torch.Tensor:
    model.eval()
    n = encodings["input_ids"].shape[0]
    preds = []
    for i in range(0, n, batch_size):
        batch = {k: v[i : i + batch_size].to(device) for k, v in encodings.items()}
        width = int(batch["attention_mask"].sum(1).max())
        batch = {k: v[:, :width] for k, v in batch.items()}
        preds.append(model(**batch).logits.argmax(-1).cpu())
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


@torch.no_grad()
def old_score_preds(ev: Evaluator, deltas, head, task: str, split: str) -> tuple[float, torch.Tensor]:
    originals = {}
    try:
        for name, delta in deltas.items():
            module = ev._modules[name]
            if not torch.isfinite(delta).all():
                raise ValueError(name)
            originals[name] = module.weight.detach().clone()
            module.weight.add_(delta.to(module.weight.dtype).to(ev.device))
        ev._swap_head(head)
        es = ev.sets[(task, split)]
        preds = old_predict(ev.model, es.encodings, ev.profile.eval_batch_size, ev.device)
        return (float((preds == es.labels).float().mean()) if len(es.labels) else float("nan")), preds
    finally:
        for name, weight in originals.items():
            ev._modules[name].weight.copy_(weight)


def old_score(ev, deltas, head, task, split) -> float:
    return old_score_preds(ev, deltas, head, task, split)[0]


def new_score(ev, deltas, head, task, split) -> float:
    return ev.score(deltas, head, task, split)


def new_preds(ev: Evaluator, deltas, head, task: str, split: str) -> torch.Tensor:
    es = ev.sets[(task, split)]
    packed = ev._packed_set(deltas, es)
    return ev._predict_packed(deltas, head, packed) if packed is not None else ev._predict_in_place(deltas, head, es)


# --- the work ---

def random_adapters(ev: Evaluator, seed: int) -> dict[str, TrainedAdapter]:
    p, gen = ev.profile, torch.Generator().manual_seed(seed)
    modules = [n for n, m in ev.model.named_modules()
               if n.rsplit(".", 1)[-1] in p.target_modules and isinstance(m, torch.nn.Linear)]
    out = {}
    for task, data in ev.data.items():
        updates = {}
        for name in modules:
            w = ev._modules[name].weight
            A = torch.randn(p.rank, w.shape[1], generator=gen) / w.shape[1] ** 0.5
            B = torch.randn(w.shape[0], p.rank, generator=gen) * 0.02
            updates[name] = LoRAUpdate(A, B, p.alpha / p.rank)
        k = data.num_labels
        head = {"classifier.weight": torch.randn(k, w.shape[1], generator=gen) * 0.05,
                "classifier.bias": torch.zeros(k)}
        out[task] = TrainedAdapter(task, updates, head, list(data.label_names), {}, {})
    return out


def calls_for(adapters: dict[str, TrainedAdapter], lams: list[float]) -> list[tuple]:
    """(label, deltas, head, task, split) for one pass: each adapter alone, then every λ × task × split."""
    calls = []
    for t, a in adapters.items():
        deltas = a.deltas
        for split in ("val", "test"):
            calls.append((f"individual/{t}/{split}", deltas, a.head, t, split))
    for lam in lams:
        merged = {}
        for a in adapters.values():
            for m, d in a.deltas.items():
                merged[m] = merged[m] + lam * d if m in merged else lam * d
        for t, a in adapters.items():
            for split in ("val", "test"):
                calls.append((f"lam={lam}/{t}/{split}", merged, a.head, t, split))
    return calls


def run_pass(score, ev, calls) -> tuple[float, dict[str, float]]:
    t0 = time.perf_counter()
    acc = {label: score(ev, deltas, head, task, split) for label, deltas, head, task, split in calls}
    return time.perf_counter() - t0, acc


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu", help="tasks, split sizes, max_length and eval_batch_size (default cpu)")
    ap.add_argument("--tasks", nargs="+", help="default: the profile's tasks")
    ap.add_argument("--val-examples", type=int)
    ap.add_argument("--test-examples", type=int)
    ap.add_argument("--lams", nargs="+", type=float, default=[0.3, 1.0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--adapters", choices=("random", "ci"), default="random")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-dtype", choices=("float32", "bfloat16", "auto"),
                    help="the new path's eval_dtype (default: the profile's; the old path is always float32)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    p = get_profile(args.profile, threads=args.threads, val_examples=args.val_examples,
                    test_examples=args.test_examples, eval_dtype=args.eval_dtype)
    tasks = list(args.tasks or p.tasks)
    ev = Evaluator(tasks, p)
    if args.adapters == "random":
        adapters = random_adapters(ev, args.seed)
    else:
        adapters = {t: train_adapter(t, "ci", seed=args.seed, progress=False) for t in tasks}
    calls = calls_for(adapters, args.lams)
    n_examples = sum(len(ev.sets[(c[3], c[4])].labels) for c in calls)
    print(f"{len(tasks)} tasks, {len(calls)} score calls, {n_examples} texts per pass; packed path: {ev.packed}",
          flush=True)

    run_pass(new_score, ev, calls[:2])  # warm-up: first oneDNN calls, the packed embedding cache
    for key in ev.sets:  # fill every set's cache once, so no timed pass pays for it
        ev._packed_set({}, ev.sets[key])
    times = {"old": [], "new": []}
    mismatches: list[dict] = []
    first: dict[str, dict[str, float]] = {}
    for rep in range(args.reps):
        order = ("old", "new") if rep % 2 == 0 else ("new", "old")
        for path in order:
            seconds, acc = run_pass(old_score if path == "old" else new_score, ev, calls)
            times[path].append(round(seconds, 3))
            first.setdefault(path, acc)
            print(f"rep {rep} {path}: {seconds:.2f}s", flush=True)
        if rep == 0:
            for label in first["old"]:
                if first["old"][label] != first["new"][label]:
                    mismatches.append({"call": label, "old": first["old"][label], "new": first["new"][label]})
    # predictions text by text (untimed)
    flips = compared = 0
    for label, deltas, head, task, split in calls:
        _, old = old_score_preds(ev, deltas, head, task, split)
        new = new_preds(ev, deltas, head, task, split)
        flips += int((old != new).sum())
        compared += len(old)
    ratios = [o / n for o, n in zip(times["old"], times["new"])]
    result = {
        "tool": "tools/bench_eval.py",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "tools/bench_eval.py"] + [shlex.quote(a) for a in (argv or sys.argv[1:])]),
        "machine": machine_description("cpu"),
        "config": {"profile": p.name, "tasks": tasks, "val_examples": p.val_examples, "test_examples": p.test_examples,
                   "max_length": p.max_length, "eval_batch_size": p.eval_batch_size, "lams": args.lams,
                   "reps": args.reps, "threads": args.threads, "adapters": args.adapters, "packed_path": ev.packed,
                   "eval_dtype": p.eval_dtype, "new_compute_dtype": str(ev.eval_dtype).replace("torch.", "")},
        "score_calls_per_pass": len(calls),
        "texts_per_pass": n_examples,
        "old_seconds": times["old"],
        "new_seconds": times["new"],
        "ratio_per_rep": [round(r, 3) for r in ratios],
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_total": round(sum(times["old"]) / sum(times["new"]), 3),
        "accuracies_equal": not mismatches,
        "accuracy_mismatches": mismatches,
        "predictions_compared": compared,
        "prediction_flips": flips,
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"old/new: median {result['ratio_median']}×, total {result['ratio_total']}×; accuracies equal: "
          f"{result['accuracies_equal']}; prediction flips {flips} of {compared}")
    return result


if __name__ == "__main__":
    main()

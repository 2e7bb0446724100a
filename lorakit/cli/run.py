"""``lorakit run``: the main job (train, merge and evaluate in one profile); see :func:`lorakit.run.encoder.run_benchmark`."""

from __future__ import annotations

import argparse

from pathlib import Path

from ..data.models import model_kind
from ..run.encoder import run_benchmark
from ..run.grid import write_results
from ..run.causal import run_causal_benchmark, write_predictions
from ..run.combine import combine_run_folders
from ..errors import LorakitError
from ..fsutil import atomic_folder
from ..results.tables import format_table


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``run`` and its options to the ``lorakit`` subparsers."""
    run = sub.add_parser("run", help="the main job: train, merge and evaluate in the current profile")
    run.add_argument("--profile", help="ci, cpu or gpu (default: LORAKIT_PROFILE, else gpu with CUDA, else cpu)")
    run.add_argument("--model", help="base model: minilm (default; the encoder track, classification tasks) or "
                                     "smollm2 (the causal-LM track, generative tasks, no heads); or a model folder")
    run.add_argument("--target-modules", nargs="+", help="LoRA target modules (default: the profile's; on smollm2 "
                                                         "q_proj k_proj v_proj o_proj, MLP: gate_proj up_proj down_proj)")
    run.add_argument("--tasks", nargs="+", help="task names (default: the profile's)")
    run.add_argument("--methods", nargs="+", help="merge methods (default: the profile's)")
    run.add_argument("--inits", nargs="+", help="LoRA A initialisations (default: the profile's; `lorakit.train.inits`)")
    run.add_argument("--seeds", nargs="+", type=int, help="seeds (default: the profile's)")
    run.add_argument("--steps", type=int, help="training steps per adapter (default: the profile's)")
    run.add_argument("--task-seeds", choices=["shared", "per_task"],
                     help="per_task (default): each task gets its own seed; shared: every task trains from the "
                          "run's seed, so equal-shaped A inits are identical (an artefact, kept as an ablation)")
    run.add_argument("--threads", type=int, help="torch CPU threads (default: the profile's, or LORAKIT_THREADS)")
    run.add_argument("--out", help="output folder (default: runs/<profile>-<time>)")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    run.add_argument("--no-figures", action="store_true", help="skip the figures (results.json holds what they plot)")
    run.set_defaults(func=run_command)
    combine = sub.add_parser("combine", help="join runs of one profile (disjoint seeds, or a control added later)")
    combine.add_argument("runs", nargs="+", help="run folders written by `lorakit run --out`")
    combine.add_argument("--out", required=True, help="output folder (results.json, results.md, RUN.md, figures)")
    combine.add_argument("--no-figures", action="store_true", help="skip the figures")
    combine.set_defaults(func=combine_command)


def profile_overrides(args: argparse.Namespace) -> dict:
    """The profile fields given on the command line (``--threads``, ``--steps``, ``--task-seeds``)."""
    overrides = {}
    if args.threads:
        overrides["threads"] = args.threads
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.task_seeds:
        overrides["task_seeds"] = args.task_seeds
    if getattr(args, "target_modules", None):
        overrides["target_modules"] = args.target_modules
    return overrides


def run_command(args: argparse.Namespace) -> int:
    """``lorakit run``: run the grid (the causal-LM track for a causal ``--model``), print the table and where it went."""
    if args.model and model_kind(args.model) == "causal":
        results = run_causal_benchmark(
            profile=args.profile, tasks=args.tasks, methods=args.methods, inits=args.inits, seeds=args.seeds,
            out=args.out, progress=not args.no_progress, command="lorakit " + " ".join(args.argv), model=args.model,
            figures=not args.no_figures, **profile_overrides(args),
        )
        print()
        print(format_table(results))
        print(f"wrote {results['out']}/results.json, results.md, predictions.jsonl and figures")
        return 0
    results = run_benchmark(
        profile=args.profile, tasks=args.tasks, methods=args.methods, inits=args.inits, seeds=args.seeds,
        out=args.out, progress=not args.no_progress, command="lorakit " + " ".join(args.argv),
        figures=not args.no_figures, **profile_overrides(args), **({"model": args.model} if args.model else {}),
    )
    print()
    print(format_table(results))
    print(f"wrote {results['out']}/results.json, results.md and figures")
    return 0


def combine_command(args: argparse.Namespace) -> int:
    """``lorakit combine RUN... --out DIR``: :func:`lorakit.run.combine.combine_results`, written like a run."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise LorakitError(f"--out {out} is a file; choose a folder")
    results = combine_run_folders(args.runs)
    with atomic_folder(out) as tmp:
        write_results(results, tmp, figures=not args.no_figures)
        if results.get("track") == "causal":
            write_predictions(results, tmp / "predictions.jsonl")
    print(f"combined {len(args.runs)} runs ({len(results['records'])} records, seeds {results['seeds']}) into {out}")
    return 0

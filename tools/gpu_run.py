"""Everything a short lent GPU slot must do, as one prepared plan (``tools/gpu_run.sh`` runs it there).

The lent machine (one H100 or H200) has torch, transformers and peft but no internet, no ``gguf`` and
no lorakit install; one command may run 10 minutes, the working tree it receives (tracked files plus
the carried folders) may hold 64 MiB, and a session has about 15 minutes of device time, start-up
included. So the full ``gpu`` profile (9 tasks × full training sets × 3 seeds × 2 inits) cannot fit,
and the causal track cannot go at all (SmolLM2 is larger than the carry limit and needs ``gguf``).

The plan is a slice of the encoder ``gpu`` profile, sized to finish in at most 8 minutes, then the
merge benchmark on Llama-shaped tensors:

1. ``--prepare`` (here, on the CPU machine): ``lorakit data export .gpu-data`` of the slice's tasks
   (MiniLM in fp16 and the tasks' pools) and a check that tree + export fit the carry limit.
2. On the GPU (``bash tools/gpu_run.sh``, which calls this file with ``--execute``):
   a. the slice, one ``lorakit run --profile gpu`` per init, each under its own time cap, so a slow
      second part cannot lose the first;
   b. ``lorakit bench --llm-shapes --device cuda`` on a few layers, under a time cap;
   c. ``GPU_RUN.md``: machine, date, the exact commands, each part's wall time and exit status.
   Everything goes to ``$OUT`` (at most 8 files come back: the runs are written without figures,
   which ``lorakit combine`` or :func:`lorakit.results.plots.plot_results` make here from ``results.json``).

``--dry-run`` prints the plan, the sizes and the time estimate, and parses every ``lorakit`` command of
it with lorakit's own parser, so a renamed option fails here, not on the GPU.

The time estimate rests on assumed H100 throughputs (:data:`ASSUMED`), not on a measurement: no GPU
has been lent to this project yet. The first run's ``GPU_RUN.md`` replaces them with measured ones.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lorakit.profiles import PROFILES  # noqa: E402  (after the path: the GPU machine has no lorakit install)

#: the slice of the gpu profile: five of its nine tasks (both sentiment granularities, a topic task, the
#: question types and the sentence-pair task), one seed, both inits, the DO family against its baselines
SLICE = {
    "tasks": ["rt_sentiment", "reuters_r8", "trec_questions", "vader_sentiment", "privacy_qa"],
    "seeds": [0],
    "inits": ["standard", "osrm"],
    "methods": ["task_arithmetic", "ties", "do", "do_ties", "ta_normeq"],
}
CARRY = ".gpu-data"
CARRY_LIMIT = 64 * 2**20  # bytes of working tree a device call may carry
SLICE_BUDGET_S = 480  # the slice: at most 8 minutes
BENCH = ["--llm-shapes", "--layers", "8", "--peft-layers", "1", "--device", "cuda"]
BENCH_BUDGET_S = 90
#: assumed H100 throughputs for MiniLM (fp32, length 128); replaced by the first measurement
ASSUMED = {"train_steps_per_s": 60.0, "eval_examples_per_s": 20000.0, "merge_seconds_per_point": 0.05}


def slice_commands(out: str) -> list[list[str]]:
    """One ``lorakit run`` per init (each writes its own folder under ``out``), then the bench."""
    runs = [["lorakit", "run", "--profile", "gpu", "--tasks", *SLICE["tasks"], "--methods", *SLICE["methods"],
             "--inits", init, "--seeds", *map(str, SLICE["seeds"]), "--no-progress", "--no-figures",
             "--out", f"{out}/run-{init}"] for init in SLICE["inits"]]
    return runs + [["lorakit", "bench", *BENCH, "--out", f"{out}/bench_llm_shapes.json"]]


def split_sizes(tasks: list[str]) -> dict[str, dict[str, int]]:
    """Each slice task's train / val / test sizes in the gpu profile (from the export, or the packages)."""
    from lorakit.data.tasks import load_task

    return {t: load_task(t, profile=PROFILES["gpu"]).sizes() for t in tasks}


def estimate_seconds(sizes: dict[str, dict[str, int]]) -> dict[str, float]:
    """The slice's time on the assumed throughputs: training, and evaluation of every grid point on val and test."""
    p = PROFILES["gpu"]
    n_units = len(SLICE["inits"]) * len(SLICE["seeds"])
    train = n_units * len(sizes) * p.steps / ASSUMED["train_steps_per_s"]
    points = len(p.lam_grid) + p.lam_extend + 2  # the λ grid, its edge extension, the second stage
    per_point = sum(s["val"] + s["test"] for s in sizes.values()) / ASSUMED["eval_examples_per_s"]
    evaluate = n_units * len(SLICE["methods"]) * points * (per_point + ASSUMED["merge_seconds_per_point"])
    return {"train": round(train, 1), "evaluate": round(evaluate, 1), "total": round(train + evaluate, 1)}


def tree_bytes() -> int:
    """Bytes of what a device call carries besides ``.gpu-data``: tracked and untracked, not ignored, files."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    return sum((ROOT / n).stat().st_size for n in names if n and (ROOT / n).is_file())


def carry_bytes() -> int:
    folder = ROOT / CARRY
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def check_commands(commands: list[list[str]]) -> None:
    """Parse each ``lorakit`` command with lorakit's own parser (argparse exits on an unknown option)."""
    from lorakit.cli import build_parser

    parser = build_parser()
    for cmd in commands:
        parser.parse_args(cmd[1:])


def plan(out: str = "$OUT") -> dict:
    sizes = split_sizes(SLICE["tasks"])
    commands = slice_commands(out)
    check_commands(commands)
    return {"slice": SLICE, "sizes": sizes, "estimate_seconds": estimate_seconds(sizes), "budget_seconds":
            {"slice": SLICE_BUDGET_S, "bench": BENCH_BUDGET_S}, "commands": [shlex.join(c) for c in commands],
            "carry": {"tree_bytes": tree_bytes(), "export_bytes": carry_bytes(), "limit_bytes": CARRY_LIMIT},
            "assumed_throughput": ASSUMED}


def print_plan(info: dict) -> None:
    p = PROFILES["gpu"]
    print(f"gpu slice: {len(SLICE['tasks'])} of {len(p.tasks)} gpu tasks, seeds {SLICE['seeds']}, inits "
          f"{SLICE['inits']}, methods {SLICE['methods']}; {p.steps} steps of batch {p.batch_size}, max length "
          f"{p.max_length}, λ grid of {len(p.lam_grid)} points, test curves")
    for t, s in info["sizes"].items():
        print(f"  {t:<16} train {s['train']:>6}  val {s['val']:>4}  test {s['test']:>5}")
    e = info["estimate_seconds"]
    print(f"estimate on assumed H100 throughput {ASSUMED}: training {e['train']} s, evaluation {e['evaluate']} s, "
          f"total {e['total']} s (budget {SLICE_BUDGET_S} s; bench capped at {BENCH_BUDGET_S} s)")
    c = info["carry"]
    status = "fits" if c["tree_bytes"] + c["export_bytes"] <= c["limit_bytes"] else "DOES NOT FIT"
    print(f"carry: tree {c['tree_bytes'] / 2**20:.1f} MiB + {CARRY} {c['export_bytes'] / 2**20:.1f} MiB "
          f"of {c['limit_bytes'] / 2**20:.0f} MiB: {status}" + ("" if c["export_bytes"] else
                                                               f" (run --prepare first to write {CARRY})"))
    for cmd in info["commands"]:
        print(f"  $ LORAKIT_DATA={CARRY} {cmd}")


def prepare() -> int:
    """Export the slice's tasks and MiniLM (fp16) into ``.gpu-data`` and check the carry limit."""
    from lorakit.data.export import export_data

    export_data(ROOT / CARRY, tasks=SLICE["tasks"], overwrite=True)
    total = tree_bytes() + carry_bytes()
    print(f"tree + {CARRY}: {total / 2**20:.1f} MiB of {CARRY_LIMIT / 2**20:.0f} MiB")
    return 0 if total <= CARRY_LIMIT else 2


def execute(out: Path) -> int:
    """On the GPU: each command under its cap, then GPU_RUN.md with what ran, how long, and how it ended."""
    import torch

    if not torch.cuda.is_available():
        print("error: no CUDA device; this runs on the lent GPU machine", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, LORAKIT_DATA=str(ROOT / CARRY), LORAKIT_CACHE=tempfile.mkdtemp(prefix="lorakit-cache-"),
               HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    commands = slice_commands(str(out))
    caps = [SLICE_BUDGET_S // len(SLICE["inits"])] * len(SLICE["inits"]) + [BENCH_BUDGET_S]
    rows = []
    with open(out / "gpu_run.log", "w") as log:
        for cmd, cap in zip(commands, caps):
            t0 = time.perf_counter()
            argv = ["timeout", str(cap), sys.executable, "-m", "lorakit.cli", *cmd[1:]]
            code = subprocess.run(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
            rows.append({"command": shlex.join(cmd), "seconds": round(time.perf_counter() - t0, 1), "exit": code,
                         "cap_seconds": cap})
    import transformers

    machine = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "transformers": transformers.__version__,
               "python": platform.python_version(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    lines = ["# GPU slice run", "", f"- machine: {json.dumps(machine)}", f"- made by: `bash tools/gpu_run.sh` "
             f"(tools/gpu_run.py --execute), data from `{CARRY}` (`python tools/gpu_run.py --prepare`)", "",
             "| command | exit | seconds | cap |", "|---|---|---|---|"]
    lines += [f"| `LORAKIT_DATA={CARRY} {r['command']}` | {r['exit']} | {r['seconds']} | {r['cap_seconds']} |" for r in rows]
    (out / "GPU_RUN.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(r["exit"] == 0 for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--dry-run", action="store_true", help="print the plan, sizes and estimate; run nothing")
    mode.add_argument("--prepare", action="store_true", help=f"export the slice's data into {CARRY} (here)")
    mode.add_argument("--execute", action="store_true", help="run the plan (on the GPU machine)")
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu-out"), help="output folder (default: $OUT)")
    ap.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON")
    args = ap.parse_args(argv)
    if args.prepare:
        return prepare()
    if args.execute:
        return execute(Path(args.out))
    info = plan(args.out)
    print(json.dumps(info, indent=1)) if args.json else print_plan(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())

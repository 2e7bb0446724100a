"""Cross-task subspace overlap and own-task feature energy of every init of a committed run.

For each ``A`` initialisation in ``RUN/results.json`` (``standard``, ``osrm``, the controls), and for
each of the run's seeds when the init depends on the seed, computes
:func:`lorakit.train.inits.init_geometry_for_tasks` on the run's tasks with the run's profile: the mean
projector overlap :math:`O_{ij} = \\lVert P_i P_j \\rVert_F^2 / r` over task pairs, and each task's
own feature energy :math:`E_t = \\operatorname{tr}(P_t H_t^\\top H_t) / \\operatorname{tr}(H_t^\\top H_t)`
(docs/methods.md §2.13). Features are collected once. Writes ``RUN/init_geometry.json`` and
``RUN/init_geometry.md``:

    python tools/init_geometry.py data/reference/cpu-cpu-2026-12-02
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
from pathlib import Path


def geometry_of_run(folder: Path, progress: bool = True) -> dict:
    from lorakit.errors import LorakitError
    from lorakit.train.inits import init_depends_on_seed, init_geometry_for_tasks
    from lorakit.train.inits import osrm_init_for_tasks
    from lorakit.profiles import get_profile

    res = json.loads((folder / "results.json").read_text())
    cfg = res["profile_config"]
    p = get_profile(cfg["name"], tasks=tuple(cfg["tasks"]))
    for key in ("model", "rank", "max_length", "target_modules", "train_examples", "task_seeds", "extra"):
        have = list(getattr(p, key)) if isinstance(getattr(p, key), tuple) else getattr(p, key)
        if have != cfg[key]:
            raise LorakitError(f"the run's {key} is {cfg[key]!r}, profile {cfg['name']} now has {have!r}; "
                               "compute its geometry with the code that made it")
    tasks = list(res["tasks"])
    collected = osrm_init_for_tasks(tasks, p, progress=progress, return_features=True)
    out: dict = {"tasks": tasks, "inits": {}}
    for init in res["inits"]:
        seeds = list(res["seeds"]) if init_depends_on_seed(init) else [res["seeds"][0]]
        per_seed = []
        for s in seeds:
            if progress:
                print(f"  {init} seed {s}", flush=True)
            per_seed.append(init_geometry_for_tasks(init, tasks, p, seed=s, osrm_A_and_features=collected))
        out["random"] = per_seed[0]["random"]
        energy = {t: statistics.fmean(g["energy"][t] for g in per_seed) for t in tasks}
        out["inits"][init] = {
            "seeds": seeds,
            "overlap": statistics.fmean(g["overlap"] for g in per_seed),
            "overlap_per_seed": [g["overlap"] for g in per_seed],
            "energy": energy,
            "energy_mean": statistics.fmean(energy.values()),
            "overlap_matrix": per_seed[0]["overlap_matrix"],
        }
    return out


def markdown(geom: dict) -> str:
    lines = ["# Init geometry", "",
             "Mean cross-task subspace overlap O (projector overlap, mean over task pairs and modules) and own-task",
             f"feature energy E (fraction of a task's own features inside its A's row space); a random subspace gets "
             f"r/d_in = {geom['random']:.3f} for both. Seed-dependent inits: mean over the run's seeds.", "",
             "| init | seeds | overlap O | own energy E (mean) | E min | E max |", "|---|---|---|---|---|---|"]
    for init, g in geom["inits"].items():
        e = list(g["energy"].values())
        lines.append(f"| {init} | {len(g['seeds'])} | {g['overlap']:.3f} | {g['energy_mean']:.3f} | {min(e):.3f} | {max(e):.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a run folder with results.json")
    args = ap.parse_args(argv)
    folder = Path(args.run)
    import torch

    geom = geometry_of_run(folder)
    geom = {"what": "subspace overlap and own-task energy of each init's A before training",
            "command": "python tools/init_geometry.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
            **geom}
    from lorakit.fsutil import atomic_file

    for name, text in (("init_geometry.json", json.dumps(geom, indent=1) + "\n"), ("init_geometry.md", markdown(geom))):
        with atomic_file(folder / name) as tmp:
            tmp.write_text(text)
    print(markdown(geom))
    return 0


if __name__ == "__main__":
    sys.exit(main())

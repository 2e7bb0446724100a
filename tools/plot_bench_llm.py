"""A figure of a `lorakit bench --llm-shapes` JSON: seconds per layer and module, lorakit vs peft vs the roofline.

    python tools/plot_bench_llm.py data/reference/bench-cpu-2026-12-02/bench_llm_ties_32layers.json

writes the PNG beside the JSON (same name, .png). lorakit's bar is the mean over the layers it ran,
peft's the mean over its ``peft_layers``, the roofline one read + write of the module's dense stack.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def main(path: str) -> Path:
    payload = json.loads(Path(path).read_text())
    fig, axes = plt.subplots(1, len(payload["results"]), figsize=(7 * len(payload["results"]), 4.2), squeeze=False)
    for ax, rec in zip(axes[0], payload["results"]):
        modules = rec["modules"]
        mine = [rec["module_s"][m] / rec["n_layers"] for m in modules]
        roof = [rec["roofline_module_s"][m] / rec["n_layers"] for m in modules]
        x, width = np.arange(len(modules)), 0.28
        ax.bar(x - width, mine, width, label=f"lorakit (mean of {rec['n_layers']} layers)")
        if rec.get("peft"):
            theirs = [rec["peft"]["module_s"][m] / rec["peft_layers"] for m in modules]
            ax.bar(x, theirs, width, label=f"peft merge_utils (mean of {rec['peft_layers']} layer(s))")
        ax.bar(x + width, roof, width, label="roofline (one read + write of the dense stack)")
        ax.set_xticks(x, modules, rotation=20)
        ax.set_yscale("log")
        ax.set_ylabel("seconds per layer")
        ratio = f", {1 / rec['ratio']:.1f}× faster than peft" if rec.get("ratio") else ""
        ax.set_title(f"{rec['method']}: {rec['n_tasks']} adapters r={rec['r']}, {rec['total_s']:.0f} s for "
                     f"{rec['n_layers']} layers{ratio}", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"{payload['machine']['cpu_count']} CPU cores, torch threads {payload['machine']['torch_threads']}, "
                 f"{payload['date'][:10]}", fontsize=9)
    fig.tight_layout()
    out = Path(path).with_suffix(".png")
    fig.savefig(out, dpi=120)
    return out


if __name__ == "__main__":
    print(f"wrote {main(sys.argv[1])}")

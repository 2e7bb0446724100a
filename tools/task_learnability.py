"""Can a MiniLM LoRA adapter learn a task at a CPU-sized slice of the gpu profile's settings?

    python tools/task_learnability.py TASK [--train 3000] [--steps 250] [--batch 16] [--max-length 128]
                                           [--lr 2e-3] [--threads 1]

Trains one adapter (the gpu profile with these sizes, on the CPU), prints one JSON line: the settings,
validation and test accuracy, the test split's majority baseline and the seconds taken. A task whose
adapter stays at its majority leaves a merge nothing to lose: that is how BoolQ was set aside for
PrivacyQA (docs/methods.md §5.8; record: data/reference/task-checks/).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lorakit.data.tasks import load_task  # noqa: E402
from lorakit.profiles import get_profile  # noqa: E402
from lorakit.train.encoder import train_adapter  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task")
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = dict(train_examples=args.train, val_examples=200, test_examples=600, steps=args.steps,
                 max_length=args.max_length, lr=args.lr, batch_size=args.batch)
    p = get_profile("gpu", device="cpu", threads=args.threads, eval_batch_size=64, **sizes)
    t0 = time.time()
    adapter = train_adapter(args.task, p, progress=False)
    data = load_task(args.task, profile=p)
    print(json.dumps({"task": args.task, "settings": sizes, "val_acc": round(adapter.metrics["val_acc"], 4),
                      "test_acc": round(adapter.metrics["test_acc"], 4),
                      "majority_test": round(data.majority_baseline(), 4), "seconds": round(time.time() - t0, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

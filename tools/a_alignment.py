"""How aligned the tasks' trained LoRA ``A`` matrices are, in the cpu profile with shared and with
per-task seeds (standard init): the mean over modules and task pairs of |cos(A_i, A_j)| of the
flattened ``lora_A`` (``lorakit.lora.measures.cosine_matrix`` per module). Adapters missing from the
cache are trained first (about 15 min on 2 cores)::

    LORAKIT_CACHE=... python tools/a_alignment.py
"""

from __future__ import annotations

import torch

from lorakit.lora.measures import cosine_matrix
from lorakit.profiles import get_profile
from lorakit.train.encoder import train_all


def mean_abs_off_diagonal_cosine(A_by_task: list[dict[str, torch.Tensor]]) -> tuple[float, int]:
    """Mean |C_ij| over i < j and modules, with C = cosine_matrix of one module's A across tasks; and the count."""
    values = []
    for module in A_by_task[0]:
        cos = cosine_matrix([A[module] for A in A_by_task]).abs()
        i, j = torch.triu_indices(len(A_by_task), len(A_by_task), offset=1)
        values.append(cos[i, j])
    flat = torch.cat(values)
    return float(flat.mean()), flat.numel()


def main() -> None:
    profile = get_profile("cpu")
    for mode in ("shared", "per_task"):
        adapters = train_all(list(profile.tasks), profile.replace(task_seeds=mode), progress=False)
        A_by_task = [{m: u.A for m, u in adapter.updates.items()} for adapter in adapters.values()]
        value, count = mean_abs_off_diagonal_cosine(A_by_task)
        print(f"{mode}: mean |cos(A_i, A_j)| over {count} (task pair, module) = {value:.3f}")


if __name__ == "__main__":
    main()

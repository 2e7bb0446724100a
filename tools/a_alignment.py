"""Mean |cos| between the flattened trained lora_A of every pair of tasks, over modules (standard init),
for the cpu profile with shared and with per-task seeds. Needs both runs' adapters in the cache
(adapters missing from the cache are trained first, about 15 min on 2 cores):

    LORAKIT_CACHE=... python tools/a_alignment.py
"""
import itertools, json, sys, torch
from lorakit.profiles import get_profile
from lorakit.train import train_adapter
p = get_profile("cpu")
for mode in ("shared", "per_task"):
    q = p.replace(task_seeds=mode)
    ads = {t: train_adapter(t, q, progress=False) for t in q.tasks}  # cached: loads
    assert all(a.path is not None for a in ads.values())
    cos = []
    for a, b in itertools.combinations(q.tasks, 2):
        for m in ads[a].updates:
            x, y = ads[a].updates[m].A.flatten().double(), ads[b].updates[m].A.flatten().double()
            cos.append(float((x @ y).abs() / (x.norm() * y.norm())))
    print(f"{mode}: mean |cos(A_i, A_j)| over {len(cos)} (task pair, module) = {sum(cos)/len(cos):.3f}")

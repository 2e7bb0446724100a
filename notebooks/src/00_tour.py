# %% [markdown]
# # 00 — Tour: why merging LoRA adapters fails, and what this course builds
#
# You fine-tune one LoRA adapter per task. Can you add them into **one** model that does all tasks?
# Often not well: the adapters *interfere*. This course derives, implements and runs the two 2025
# answers — the **magnitude-variance analysis with DO-Merging** and **OSRM** — on real models and
# real data, from a toy example to a full benchmark.
#
# | # | notebook | what you leave with |
# |---|---|---|
# | 00 | tour (this one) | the map, the run profiles, a two-adapter merge that visibly interferes |
# | 01 | LoRA and task vectors | $W = W_0 + s\,BA$ with peft's shapes, checked against peft; one real adapter |
# | 02 | merging baselines | task arithmetic, TIES, DARE, KnOTS; why merging $A$ and $B$ separately is wrong |
# | 03 | magnitude variance | LoRA vs full fine-tuning magnitudes; variance vs merged accuracy |
# | 04 | OSRM | choose $A$ before fine-tuning so that task $t$'s update leaves task $j$'s features alone |
# | 05 | DO-Merging | decouple magnitude and direction; orthogonalise the factors; the ablation |
# | 06 | full merges | the whole benchmark live, beside the committed `cpu`-profile reference runs |
#
# The `lorakit` package holds every equation in one function; each notebook derives it, checks
# it with an `assert`, then runs it for real.
#
# **Reference results** committed under `data/reference/`, all made on a 2-core CPU machine:
# `cpu-cpu-2026-12-02` (the `cpu`-profile benchmark that notebook 06 reads: 8 tasks, 5 training
# seeds, each task from its own seed, every test example's right/wrong recorded, so every claim
# gets a paired confidence interval); two older one-seed six-task runs that differ only in
# whether tasks share a seed (`cpu-cpu-2026-11-23`, shared; `…-per-task-seeds`), kept as that
# ablation; `mv_study_cpu.json` (notebook 03's magnitude-variance study of claims (a)–(c)); and
# the merge-engine timings `bench-cpu-20261123` and `bench-cpu-2026-12-02`, the latter with a
# measured TIES merge over all 32 layers of Llama-3-8B-shaped synthetic adapters. Each folder's
# `RUN.md` names the machine, the versions and the exact commands. **No GPU run has been made
# yet**; the README's *Reference results* section says how to make one.
#
# Runtime, measured from an empty adapter cache with one torch thread on a shared 2-core CPU
# (`data/reference/notebook-runtime/ci-2026-12-03.json`,
# `data/reference/notebook-runtime/cpu-2026-12-03-a.json`): `ci` ≈ 2 min · `cpu` ≈ 2 min · `gpu` not
# measured (no GPU was lent). Most of it trains the two small adapters of the merge demo (cached
# afterwards).

# %% [markdown]
# ## Run profiles
#
# One environment variable, `LORAKIT_PROFILE`, picks the sizes: `ci` (tiny, for the test suite,
# minutes on 2 CPU cores), `cpu` (a learner's laptop; the default without CUDA) and `gpu` (full
# scale; the default with CUDA). Every size can also be overridden by argument.

# %%
from lorakit.course.notebook import setup, show_progress
from lorakit.profiles import PROFILES
P = setup()

# %%
# NBVAL_CHECK_OUTPUT
for name, prof in PROFILES.items():
    print(f"{name:>3}: {len(prof.tasks)} tasks, train {prof.train_examples or 'all'} examples, "
          f"{prof.steps} steps, max_len {prof.max_length}, seeds {list(prof.seeds)}, device {prof.device}")

# %% [markdown]
# ## Two real tasks, two adapters
#
# Two real labelled text tasks shipped inside installed Python packages: *subjectivity* (plot synopsis
# or critic's review?) and *2016 election tweets* (Clinton's or Trump's account?). We fine-tune one
# LoRA adapter per task on the packaged MiniLM encoder (cached on disk after the first run).

# %%
from lorakit.data.tasks import load_task
from lorakit.train.encoder import train_adapter

tasks = ["rt_subjectivity", "election_tweets"]
adapters = {t: train_adapter(t, P, progress=show_progress(P)) for t in tasks}
for t, a in adapters.items():
    print(f"{t:>16}: test accuracy {a.metrics['test_acc']:.3f} (majority {a.metrics['majority_test']:.3f})")
    assert a.metrics["test_acc"] > a.metrics["majority_test"], "each adapter should beat its majority baseline"

# %% [markdown]
# ## Merge them: $W = W_0 + \Delta W_1 + \Delta W_2$
#
# Task arithmetic with $\lambda = 1$ simply adds both updates to the shared encoder; each task keeps
# its own classification head. If the adapters did not interfere, each task's accuracy would stay at
# its individual level (normalized accuracy = merged ÷ individual = 1).

# %%
from lorakit.eval.encoder import Evaluator
from lorakit.eval.scorer import normalized_accuracy
from lorakit.merge import merge_adapters

ev = Evaluator(tasks, P)
individual = ev.individual(adapters, "test")
merged_dW = merge_adapters([adapters[t].updates for t in tasks], "task_arithmetic", lam=1.0)
merged = ev.score_tasks(merged_dW, adapters, "test")
norm = normalized_accuracy(merged, individual)
for t in tasks:
    print(f"{t:>16}: individual {individual[t]:.3f} → merged {merged[t]:.3f} (normalized {norm[t]:.3f})")
avg = sum(norm.values()) / len(norm)
print(f"average normalized accuracy: {avg:.3f}")
assert min(norm.values()) < 1.0, "at least one task should lose accuracy when the updates are added"

# %%
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(5, 3))
xs = range(len(tasks))
ax.bar([x - 0.2 for x in xs], [individual[t] for t in tasks], 0.4, label="individual adapter")
ax.bar([x + 0.2 for x in xs], [merged[t] for t in tasks], 0.4, label="merged (task arithmetic, λ=1)")
ax.set_xticks(list(xs)); ax.set_xticklabels(tasks); ax.set_ylim(0, 1); ax.set_ylabel("test accuracy")
ax.legend(loc="lower right"); ax.set_title("merging two adapters: interference");

# %% [markdown]
# ## Where the loss comes from
#
# On task $j$'s input $h_j$ the merged layer computes $W_0 h_j + \Delta W_j h_j + \Delta W_i h_j$. The last
# term is the other task's update acting on task $j$'s data: **interference**. Its size relative to
# the task's own update is a first diagnostic (notebook 04 makes it the OSRM objective):

# %%
import torch
from lorakit.osrm import collect_features, interference_ratio
from lorakit.data.models import load_base, load_tokenizer

tok = load_tokenizer(P.model)
base = load_base(P.model, num_labels=2)
modules = list(adapters[tasks[0]].updates)
feats = {}
for t in tasks:
    texts = load_task(t, profile=P).val[0][:32]
    enc = tok(texts, truncation=True, max_length=P.max_length, padding=True, return_tensors="pt")
    feats[t] = collect_features(base, [dict(enc)], modules, mode="tokens")
for t, j in [(tasks[0], tasks[1]), (tasks[1], tasks[0])]:
    ratios = interference_ratio(adapters[t].updates, adapters[j].updates, feats[j])
    print(f"‖ΔW_{t} H_{j}ᵀ‖ / ‖ΔW_{j} H_{j}ᵀ‖, mean over layers: {sum(ratios.values()) / len(ratios):.2f}")

# %% [markdown]
# A ratio near 1 means the foreign update moves task $j$'s features about as much as task $j$'s own
# update does. The rest of the course derives why (magnitudes, directions, subspaces) and how to
# shrink this term *before* (OSRM) or *during* (DO-Merging) the merge.

# %% [markdown]
# ## Exercise: predict, run, interpret
#
# **1. The merge at half strength.** Task arithmetic has one knob, $\lambda$: $W = W_0 + \lambda(\Delta W_1 + \Delta W_2)$.
# Above, $\lambda = 1$. *Before you run anything*, predict: with $\lambda = 0.5$, is the average normalized
# accuracy of the two tasks **higher**, **lower** or **about the same** (within 0.01) as at $\lambda = 1$?
# Think about both terms on task $j$'s input: $\lambda \Delta W_j h_j$ (its own update) and $\lambda \Delta W_i h_j$
# (the interference). Set `prediction`, then write `my_task_arithmetic(deltas, lam)` for one layer:
# `deltas` is a list of $d_\text{out} \times d_\text{in}$ tensors, the result $\lambda \sum_i \Delta W_i$. The
# checker tests it on random updates, runs it on every layer of the two adapters at both values of
# $\lambda$, measures, and explains what it saw (any prediction is accepted).

# %%
from lorakit.course import exercises

prediction = None  # your prediction: "higher", "lower" or "about the same"

def my_task_arithmetic(deltas, lam):
    raise NotImplementedError  # your code here

def avg_normalized(merged_dW):
    """Average normalized test accuracy of the two tasks with the merged updates {module: ΔW}."""
    norm = normalized_accuracy(ev.score_tasks(merged_dW, adapters, "test"), individual)
    return sum(norm.values()) / len(norm)

try:
    exercises.check_predict_half_merge(prediction, my_task_arithmetic, avg_normalized,
                                       [adapters[t].updates for t in tasks])
except NotImplementedError:
    print("exercise 1 not attempted yet")

# %% [markdown]
# # 02 — Merging baselines: task arithmetic, TIES, DARE, KnOTS
#
# **What you leave with:** the four data-free merges that every LoRA-merging paper compares against,
# each derived as an equation, written in a few lines from scratch, and checked against lorakit's
# implementation (`lorakit.merge`) and, where one exists, against peft's (`peft.utils.merge_utils`);
# why you must merge the products $\Delta W_i = s_i B_i A_i$ and not the factors $A_i$, $B_i$
# separately, measured on peft's own `add_weighted_adapter`; and all four methods run on three real
# adapters, with λ chosen on validation and normalized accuracy reported on test.
#
# Notation (notebook 01): for one adapted Linear layer and task $i = 1 \dots N$,
# $\Delta W_i = s_i B_i A_i \in \mathbb{R}^{d_\text{out} \times d_\text{in}}$ with
# $A_i \in \mathbb{R}^{r \times d_\text{in}}$, $B_i \in \mathbb{R}^{d_\text{out} \times r}$, $s_i = \alpha/r$.
# A merge maps $\{\Delta W_i\}$ to one $\Delta W^*$ per layer; the merged model is $W_0 + \Delta W^*$, and
# each task keeps its own classification head. Cells whose printed output the text cites carry
# `# NBVAL_CHECK_OUTPUT`.
#
# Runtime, measured from an empty adapter cache with one torch thread on a shared 2-core CPU
# (`data/reference/notebook-runtime/ci-2026-12-03.json`,
# `data/reference/notebook-runtime/cpu-2026-12-03-a.json`): `ci` ≈ 3 min · `cpu` ≈ 11 min · `gpu`
# not measured (no GPU was lent). It trains one adapter per course task (cached for notebooks
# 03–06), then merges and evaluates them.

# %%
from lorakit.course.notebook import course_tasks, setup, show_progress
P = setup()  # profile from LORAKIT_PROFILE (ci in `make test`), else cpu/gpu

# %% [markdown]
# ## 1. Task arithmetic
#
# Ilharco et al. (2023) add the task vectors, scaled by one coefficient $\lambda$:
#
# $$ \Delta W^* = \lambda \sum_{i=1}^{N} \Delta W_i = \lambda \sum_{i=1}^{N} s_i B_i A_i. \tag{2.1}$$
#
# The sum of products is itself one product of the **concatenated** factors,
#
# $$ \sum_i s_i B_i A_i = \big[\, s_1 B_1 \;\cdots\; s_N B_N \,\big]
#    \begin{bmatrix} A_1 \\ \vdots \\ A_N \end{bmatrix}, \qquad
#    (d_\text{out} \times Nr)\,(Nr \times d_\text{in}), $$
#
# so the merge is a LoRA update of rank at most $Nr$, and lorakit computes it that way
# (`task_arithmetic_merge`) without forming the $N$ dense updates. peft's `task_arithmetic` takes the
# dense task tensors and one weight per task; with all weights equal to $\lambda$ it is (2.1).

# %%
# NBVAL_CHECK_OUTPUT
import torch
from peft.utils import merge_utils as pm
from lorakit.lora.update import LoRAUpdate
from lorakit.merge import merge_layer, task_arithmetic_merge

def toy_updates(n=3, d_out=20, d_in=16, r=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [LoRAUpdate(torch.randn(r, d_in, generator=g) / r, torch.randn(d_out, r, generator=g), 2.0) for _ in range(n)]

ups = toy_updates()
lam = 0.7
scratch = lam * sum(u.scaling * u.B @ u.A for u in ups)                          # (2.1), dense
ours = task_arithmetic_merge(ups, lam=lam)                                         # concatenated factors
peft_ta = pm.task_arithmetic([u.delta() for u in ups], torch.full((len(ups),), lam))
assert torch.allclose(ours, scratch, atol=1e-5) and torch.allclose(ours, peft_ta, atol=1e-5)
assert torch.equal(merge_layer(ups, "task_arithmetic", lam=lam), ours)            # the registry's front door
rank = int(torch.linalg.matrix_rank(task_arithmetic_merge([u.to(torch.float64) for u in ups], lam=lam)))  # float64: no rounding noise
assert rank <= sum(u.rank for u in ups)
print(f"TA: lorakit = scratch = peft (atol 1e-5); rank of ΔW* = {rank} ≤ N·r = {sum(u.rank for u in ups)}")

# %% [markdown]
# ## 2. Merge products, not factors: the cross terms
#
# It is tempting to merge the *factors* — average the $A_i$, average the $B_i$ — because the result is
# again a rank-$r$ adapter. But a product of sums is not a sum of products. With weights $w_i > 0$ and
# each factor carrying $\sqrt{w_i s_i}$,
#
# $$ \Big(\sum_i \sqrt{w_i s_i}\, B_i\Big)\Big(\sum_j \sqrt{w_j s_j}\, A_j\Big)
#    = \underbrace{\sum_i w_i s_i B_i A_i}_{\text{what we want}}
#    \;+\; \underbrace{\sum_{i \ne j} \sqrt{w_i s_i w_j s_j}\; B_i A_j}_{\text{cross terms}}. \tag{2.2}$$
#
# A cross term $B_i A_j$ feeds task $j$'s input directions into task $i$'s output directions: an update no
# task ever learned. Nothing makes it small: for independently trained adapters it is typically as large
# as the terms we want (measured below on a toy model, and on real adapters in section 6).
#
# **What peft 0.21.2 does** (read in `peft/tuners/lora/model.py`, `add_weighted_adapter` and
# `_generalized_task_arithmetic_weighted_adapter`):
#
# * `combination_type="linear"` — and likewise `ties`, `dare_linear`, `dare_ties`, `magnitude_prune` —
#   combines all $A$'s with weights $\operatorname{sign}(w_i s_i)\sqrt{|w_i s_i|}$ and all $B$'s with
#   $\sqrt{|w_i s_i|}$, separately; the new adapter has the common rank $r$ (equal ranks are required) and
#   `lora_alpha = r`, so its scaling is 1. Its $\Delta W$ is exactly the left side of (2.2). peft's own
#   docstring calls `linear` "a very rough approximation".
# * `combination_type="cat"` stacks the factors, $A = [w_1 s_1 A_1; \dots]$, $B = [B_1 \cdots B_N]$, rank
#   $\sum r_i$: exactly the block product of section 1, so it is exact.
# * `combination_type="svd"` (and the `*_svd` variants) combines the dense $\Delta W_i$ and re-factorises by a
#   truncated SVD at `svd_rank` (default: the largest $r_i$): exact only if that rank is large enough.
#
# We check all of this on a tiny BERT with two LoRA adapters, reading every merged adapter back with
# `lorakit.lora.peft.read_adapter(model, adapter_name=...)`.

# %%
# NBVAL_CHECK_OUTPUT
import math
import warnings
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertForSequenceClassification
from lorakit.lora.peft import read_adapter

def tiny_bert():
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100, num_labels=3)
    return BertForSequenceClassification(cfg).eval()

def two_adapter_model(shared_A=False):
    lc = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"])
    model = get_peft_model(tiny_bert(), lc, adapter_name="t1")
    model.add_adapter("t2", lc)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_()
        if shared_A:
            for module in model.modules():
                if hasattr(module, "lora_A") and "t1" in getattr(module, "lora_A", {}):
                    module.lora_A["t2"].weight.copy_(module.lora_A["t1"].weight)
    return model

def rel_err(merged, true):
    return max(((merged[m].delta() - true[m]).norm() / true[m].norm()).item() for m in true)

model = two_adapter_model()
w = [0.7, 0.4]
u1, u2 = read_adapter(model, adapter_name="t1"), read_adapter(model, adapter_name="t2")
true = {m: w[0] * u1[m].delta() + w[1] * u2[m].delta() for m in u1}              # Σ w_i s_i B_i A_i
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for ctype, kw in [("linear", {}), ("cat", {}), ("svd", {}), ("svd", {"svd_rank": 8})]:
        name = f"{ctype}_{kw.get('svd_rank', 'default')}"
        model.add_weighted_adapter(["t1", "t2"], w, name, combination_type=ctype, **kw)
        merged = read_adapter(model, adapter_name=name)
        print(f"{ctype:>6} {str(kw):>16}: rank {next(iter(merged.values())).rank}, scaling {next(iter(merged.values())).scaling}, "
              f"max relative error of ΔW vs Σ w_i ΔW_i: {rel_err(merged, true):.2f}")
lin = read_adapter(model, adapter_name="linear_default")
for m in u1:                                               # (2.2): linear − true = the cross terms, exactly
    c1, c2 = math.sqrt(w[0] * u1[m].scaling), math.sqrt(w[1] * u2[m].scaling)
    cross = c1 * c2 * (u1[m].B @ u2[m].A + u2[m].B @ u1[m].A)
    assert torch.allclose(lin[m].delta() - true[m], cross, atol=1e-5)
assert rel_err(read_adapter(model, adapter_name="cat_default"), true) < 1e-6
assert rel_err(read_adapter(model, adapter_name="svd_8"), true) < 1e-4
print("linear − Σ w_i ΔW_i equals the cross terms of (2.2): True")

# %% [markdown]
# So `linear` is off by roughly 100 % of the update, `cat` is exact, and `svd` at the default rank
# $r$ drops half of the rank-$2r$ sum (exact again with `svd_rank=8`). Even when the adapters share
# the same $A$ (say, a frozen common initialisation), `linear` is not a weighted sum: with equal weights
# $w$ the product becomes $\big(\sum_i \sqrt{ws}\,B_i\big)\big(N\sqrt{ws}\,A\big) = N \cdot \sum_i w s\, B_i A$,
# i.e. **N times** the intended update.

# %%
# NBVAL_CHECK_OUTPUT
model_shared = two_adapter_model(shared_A=True)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    model_shared.add_weighted_adapter(["t1", "t2"], [0.5, 0.5], "linear", combination_type="linear")
v1, v2, lin = (read_adapter(model_shared, adapter_name=a) for a in ("t1", "t2", "linear"))
ratios = [(lin[m].delta().norm() / (0.5 * v1[m].delta() + 0.5 * v2[m].delta()).norm()).item() for m in v1]
assert all(torch.allclose(lin[m].delta(), 2 * (0.5 * v1[m].delta() + 0.5 * v2[m].delta()), atol=1e-5) for m in v1)
print(f"shared A, weights (0.5, 0.5): ‖ΔW_linear‖ / ‖Σ w_i ΔW_i‖ = {min(ratios):.3f} … {max(ratios):.3f} (N = 2)")

# %% [markdown]
# Every method below therefore acts on the dense updates $\Delta W_i$ (lorakit's `merge_layer`), never
# on the factors; for real adapters the cost of averaging factors is measured in section 6.
#
# ## 3. TIES-Merging
#
# Yadav et al. (2023) attribute the loss of task arithmetic to two kinds of interference: many small,
# redundant entries, and entries where tasks disagree in sign. Per layer, with $\tau_i = \Delta W_i$:
#
# $$ \begin{aligned}
# &\text{trim:} && \hat\tau_i = \tau_i \odot m_i, \quad m_{i,e} = \big[\,|\tau_{i,e}| \text{ is among the } k = \lfloor \rho \cdot d_\text{out} d_\text{in} \rfloor \text{ largest of } |\tau_i|\,\big] \\
# &\text{elect:} && \sigma_e = \operatorname{sign}\Big(\sum_i \hat\tau_{i,e}\Big) \quad (\text{a sum of } 0 \text{ elects } +) \\
# &\text{disjoint mean:} && \tau^*_e = \frac{\sum_{i \in \mathcal{A}_e} \hat\tau_{i,e}}{\max(1, |\mathcal{A}_e|)}, \quad
#    \mathcal{A}_e = \{\, i : \operatorname{sign}\hat\tau_{i,e} = \sigma_e \,\} \\
# &\text{scale:} && \Delta W^* = \lambda\, \tau^*
# \end{aligned} \tag{2.3}$$
#
# $\rho$ is the *density* (the fraction of entries kept). A trimmed entry is 0, whose sign never
# agrees, so it is not counted in $|\mathcal{A}_e|$. These are peft's rules (`prune(method="magnitude")`,
# `calculate_majority_sign_mask(method="total")`, `disjoint_merge`). First a worked example, entry by
# entry in plain Python, on three tasks of six entries:

# %%
# NBVAL_CHECK_OUTPUT
from lorakit.merge import disjoint_mean, elect_sign, ties_dense, trim_topk

taus = [[4.0, -1.0, 0.5, -3.0, 2.0, 0.2],
        [-2.0, 3.0, 0.1, -1.0, -5.0, 0.3],
        [1.0, -0.5, 2.5, 2.0, 1.0, -4.0]]
density, lam = 0.5, 1.0
k = int(density * 6)
trimmed = [[x if sorted(map(abs, t), reverse=True).index(abs(x)) < k else 0.0 for x in t] for t in taus]
sign = lambda x: (x > 0) - (x < 0)
merged = []
for e in range(6):
    column = [t[e] for t in trimmed]
    elected = 1 if sum(column) >= 0 else -1
    agree = [x for x in column if sign(x) == elected]
    merged.append(lam * sum(agree) / max(1, len(agree)))
for name, row in [("trimmed 1", trimmed[0]), ("trimmed 2", trimmed[1]), ("trimmed 3", trimmed[2]), ("TIES", merged)]:
    print(f"{name:>9}: " + " ".join(f"{x:5.1f}" for x in row))
stack = torch.tensor(taus)
assert torch.equal(torch.stack([trim_topk(t, density) for t in stack]), torch.tensor(trimmed))
assert torch.allclose(ties_dense(stack, lam=lam, density=density), torch.tensor(merged))
assert torch.allclose(pm.ties(list(stack), torch.full((3,), lam), density), torch.tensor(merged))
print("plain sum (task arithmetic, λ=1):", " ".join(f"{x:5.1f}" for x in stack.sum(0).tolist()))

# %% [markdown]
# Entry 1: tasks 1 and 2 disagree ($4$ vs $-2$); the sum elects $+$, so the merge keeps $4$ instead of
# task arithmetic's $3$. Entry 5: $-5$ outvotes $+2$; the disjoint mean keeps $-5$ rather than the sum's
# $-2$. The same rules on random layers, against peft, and trim's exact count
# ($\lfloor\rho\, d_\text{out} d_\text{in}\rfloor$ non-zeros per task):

# %%
# NBVAL_CHECK_OUTPUT
from lorakit.merge import ties_merge

ups = toy_updates(n=4, seed=3)
for density in (0.1, 0.2, 0.5):
    for lam in (0.5, 1.0):
        ours = ties_merge(ups, lam=lam, density=density)
        ref = pm.ties([u.delta() for u in ups], torch.full((4,), lam), density)
        assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-6)
    nnz = [int((trim_topk(u.delta(), density) != 0).sum()) for u in ups]
    assert nnz == [int(density * 20 * 16)] * 4
    print(f"density {density}: {nnz[0]} of 320 entries kept per task; TIES(lorakit) = TIES(peft) for λ ∈ {{0.5, 1}}")

# %% [markdown]
# ## 4. DARE: drop and rescale
#
# Yu et al. (2024) drop each entry of each task vector at random with probability $p$ and rescale the
# survivors so that the expectation is unchanged:
#
# $$ \tilde\tau_i = \frac{m_i \odot \tau_i}{1 - p}, \quad m_{i,e} \sim \text{Bernoulli}(1-p), \qquad
#    \mathbb{E}[\tilde\tau_{i,e}] = \frac{(1-p)\,\tau_{i,e}}{1-p} = \tau_{i,e}, \qquad
#    \operatorname{Var}[\tilde\tau_{i,e}] = \frac{p}{1-p}\,\tau_{i,e}^2. \tag{2.4}$$
#
# The sparse $\tilde\tau_i$ are then combined by task arithmetic (`combine="linear"`, peft's `dare_linear`)
# or by TIES' sign election and disjoint mean without a trim (`combine="ties"`, peft's `dare_ties`).
# peft draws its masks from torch's global generator; lorakit from a `torch.Generator` seeded with
# `seed` — the same stream, so the same seed gives the same masks. First the expectation and variance of
# (2.4), by Monte Carlo over 4000 draws:

# %%
# NBVAL_CHECK_OUTPUT
from lorakit.merge import dare_drop, dare_merge

tau = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
p = 0.6
g = torch.Generator().manual_seed(0)
draws = torch.stack([dare_drop(tau, p, g) for _ in range(4000)])
mean_mc, var_mc = draws.mean(0), draws.var(0)
se = (tau.abs() * math.sqrt(p / (1 - p) / 4000))
assert ((mean_mc - tau).abs() < 4 * se).all()                         # E[DARE(τ)] = τ
assert torch.allclose(var_mc, p / (1 - p) * tau**2, rtol=0.1)          # Var = p/(1-p) τ²
assert set(draws.unique().tolist()) <= {0.0} | set((tau / (1 - p)).tolist())   # survivors are τ/(1-p)
print("τ            :", [f"{x:+.2f}" for x in tau.tolist()])
print("mean of DARE :", [f"{x:+.2f}" for x in mean_mc.tolist()])
print("var / (p/(1-p) τ²):", [f"{x:.2f}" for x in (var_mc / (p / (1 - p) * tau**2)).tolist()])

# %% [markdown]
# And the full merge against peft, with the same seed:

# %%
# NBVAL_CHECK_OUTPUT
ups = toy_updates(n=3, seed=5)
for combine, peft_fn in [("linear", pm.dare_linear), ("ties", pm.dare_ties)]:
    ours = dare_merge(ups, lam=0.8, drop_rate=0.4, seed=7, combine=combine)
    torch.manual_seed(7)
    ref = peft_fn([u.delta() for u in ups], torch.full((3,), 0.8), 1 - 0.4)
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-6)
    print(f"DARE combine={combine!r}: lorakit = peft.{peft_fn.__name__} with the same seed")
# from scratch: the survivors of each task are its own entries / (1 - p), summed
g = torch.Generator().manual_seed(7)
masks = [torch.bernoulli(torch.full(u.shape, 0.6), generator=g) for u in ups]
scratch = 0.8 * sum(m * u.delta() / 0.6 for m, u in zip(masks, ups))
assert torch.allclose(dare_merge(ups, lam=0.8, drop_rate=0.4, seed=7), scratch, atol=1e-5)
print("DARE-linear from scratch (2.4) = lorakit")

# %% [markdown]
# `merge_adapters` (whole adapters) gives every layer its own reproducible seed
# (`layer_seed(seed, module)`), so layers do not share one mask pattern.
#
# **The three rules side by side.** The diagram applies task arithmetic (2.1), TIES (2.3) and DARE
# (2.4, one draw, $p = 0.5$) to the six-entry example of section 3. Bars are the three tasks' entries
# (what each rule lets into the merge: all of them, the trimmed survivors that agree with the elected
# sign, the random survivors rescaled by $1/(1-p)$); the black marks are the merged entries, $\lambda = 1$.
# The cell asserts that the drawn marks are lorakit's merges.

# %%
import matplotlib.pyplot as plt

ex = torch.tensor(taus)                                              # 3 tasks × 6 entries (section 3)
ties_in = torch.where(elect_sign(torch.stack([trim_topk(t, 0.5) for t in ex])), torch.stack([trim_topk(t, 0.5) for t in ex]), 0.0)
g_fig = torch.Generator().manual_seed(3)
dare_in = torch.stack([dare_drop(t, 0.5, g_fig) for t in ex])
panels = [("task arithmetic: sum everything", ex, ex.sum(0)),
          ("TIES: trim, elect a sign, mean of the agreeing", ties_in, ties_dense(ex, lam=1.0, density=0.5)),
          ("DARE: drop at random, rescale by 1/(1-p), sum", dare_in, dare_in.sum(0))]
assert torch.allclose(panels[1][2], disjoint_mean(ties_in, ties_in != 0)) and torch.allclose(panels[0][2], ex.sum(0))
fig, axes = plt.subplots(1, 3, figsize=(12, 3), sharey=True)
for ax, (title, parts, merged_row) in zip(axes, panels):
    for i in range(3):
        ax.bar([e + 0.25 * (i - 1) for e in range(6)], parts[i].tolist(), 0.25, color=f"C{i}", label=f"task {i + 1}")
    ax.scatter(range(6), merged_row.tolist(), marker="_", s=400, color="k", linewidths=3, label="merged", zorder=3)
    ax.axhline(0, color="0.5", lw=0.5); ax.set_title(title, fontsize=9); ax.set_xlabel("entry")
axes[0].set_ylabel("value"); axes[0].legend(fontsize=7, ncol=2);

# %% [markdown]
# ## 5. KnOTS: merge in a shared SVD basis
#
# Stoica et al. (2025) observe that LoRA updates of different tasks live in poorly aligned subspaces, so
# entry-wise rules like TIES compare numbers that mean different things. KnOTS first puts all tasks in
# one basis: the SVD of the side-by-side updates of a layer,
#
# $$ M = \big[\Delta W_1 \;\cdots\; \Delta W_N\big] = U \Sigma \big[V_1^\top \;\cdots\; V_N^\top\big]
#    \in \mathbb{R}^{d_\text{out} \times N d_\text{in}}, \qquad \Delta W_i = U\, (\Sigma V_i^\top), $$
#
# where $U$ ($d_\text{out} \times k$, $k \le \sum_i r_i$) is shared and task $i$ is now the small block
# $\Sigma V_i^\top$ ($k \times d_\text{in}$). The blocks are merged entry-wise (TIES for KnOTS-TIES, DARE for
# KnOTS-DARE) and the layer is rebuilt with $U$:
#
# $$ \Delta W^* = U\, \operatorname{TIES}_{\lambda,\rho}\big(\{\Sigma V_i^\top\}\big). \tag{2.5}$$
#
# With the linear base (task arithmetic) KnOTS is plain task arithmetic, since
# $U \sum_i \Sigma V_i^\top = \sum_i \Delta W_i$. lorakit's `knots_basis` never forms $M$: it takes thin QRs of
# the stacked factors and the SVD of an $Nr \times Nr$ core, in float64. The check: the dense numpy SVD
# of $M$ and peft's `ties` on its blocks, against lorakit.

# %%
# NBVAL_CHECK_OUTPUT
import numpy as np
from lorakit.merge import knots_basis

ups = toy_updates(n=3, d_out=24, d_in=18, r=4, seed=11)
M = np.concatenate([u.delta(torch.float64).numpy() for u in ups], axis=1)          # d_out × N·d_in
U, S, Vt = np.linalg.svd(M, full_matrices=False)
k = int((S > 1e-10 * S[0]).sum())
U, S, Vt = U[:, :k], S[:k], Vt[:k]
blocks = [torch.from_numpy(S[:, None] * Vt[:, i * 18:(i + 1) * 18]) for i in range(3)]   # Σ V_iᵀ, k × d_in
for i, u in enumerate(ups):                                                          # ΔW_i = U Σ V_iᵀ
    assert np.allclose(U @ blocks[i].numpy(), u.delta(torch.float64).numpy(), atol=1e-10)
basis = knots_basis(ups)
assert basis.S.shape[0] == k and torch.allclose(basis.S, torch.from_numpy(S), rtol=1e-10)
for lam, density in [(1.0, 0.2), (0.6, 0.5)]:
    scratch = torch.from_numpy(U) @ pm.ties(blocks, torch.full((3,), lam, dtype=torch.float64), density)
    assert torch.allclose(merge_layer(ups, "knots", lam=lam, density=density), scratch.float(), atol=1e-5)
assert torch.allclose(merge_layer(ups, "knots", base="task_arithmetic", lam=0.5), task_arithmetic_merge(ups, lam=0.5), atol=1e-5)
print(f"k = {k} singular values (N·r = 12); KnOTS-TIES(lorakit) = U · peft.ties(numpy blocks); KnOTS-TA = TA")

# %% [markdown]
# The SVD fixes each singular pair only up to a sign; flipping $u_k$ flips row $k$ of every block, and
# TIES then flips its elected sign with it, so (2.5) does not depend on the sign convention. (KnOTS'
# code trims over all layers at once; lorakit trims per layer, like TIES here.)
#
# Every method is in one registry, with its paper and hyperparameters:

# %%
# NBVAL_CHECK_OUTPUT
from lorakit.merge import METHODS
for name in ("task_arithmetic", "ties", "dare", "knots"):
    spec = METHODS[name]
    print(f"{name:>15}: {spec.url}  params {dict(spec.params)}")

# %% [markdown]
# ## 6. Real adapters: the course tasks, four merges
#
# The profile's course tasks (`course_tasks(P)`; in `ci` three: subjectivity, 2016 election tweets,
# Reuters R8 topics; in `cpu` five of its eight benchmark tasks), one LoRA
# adapter each on the packaged MiniLM (cached on disk and shared with the other notebooks). Each merge's
# $\lambda$ is chosen on the **validation** split by the mean normalized accuracy (`select_and_report`,
# over `method_grid`), and the chosen merge is scored once on **test**. Here only $\lambda$ is searched:
# `lorakit.run.search.method_grid` fixes TIES' and KnOTS' density at 0.2 and DARE's drop rate at 0.5
# (the `chosen` column of the table below shows them). `lorakit run` (notebook 06) adds a second stage
# in the `cpu` and `gpu` profiles: at the chosen $\lambda$, two more validation points of each method's
# second hyperparameter (density 0.1 / 0.4, drop rate 0.3 / 0.7, DO's γ 0.3 / 3.0, or λ × 0.8 / 1.25
# for task arithmetic; `Profile.tune_grid`, `lorakit.run.search.method_refine`), the same budget for
# every method.
#
# $$ \text{normalized}_t = \frac{\text{acc}_t(W_0 + \Delta W^*,\ \text{head}_t)}{\text{acc}_t(W_0 + \Delta W_t,\ \text{head}_t)}. $$

# %%
# NBVAL_CHECK_OUTPUT
from lorakit.run.search import method_grid as _grid
from lorakit.profiles import TUNE_GRID

print("this notebook: TIES", _grid("ties", P)[0], "| DARE", _grid("dare", P)[0], "(λ varies)")
print("lorakit run's second stage (cpu, gpu):", TUNE_GRID)
assert _grid("ties", P)[0]["density"] == _grid("knots", P)[0]["density"] == 0.2 and _grid("dare", P)[0]["drop_rate"] == 0.5
assert TUNE_GRID == {"density": (0.1, 0.4), "drop_rate": (0.3, 0.7), "gamma": (0.3, 3.0), "lam": (0.8, 1.25)}

# %%
from lorakit.train.encoder import train_adapter

tasks = course_tasks(P)  # the profile's course tasks (cpu: 5 of its 8; lorakit.course.notebook.course_tasks)
adapters = {t: train_adapter(t, P, progress=show_progress(P)) for t in tasks}
for t, a in adapters.items():
    print(f"{t:>16}: test accuracy {a.metrics['test_acc']:.3f} (majority {a.metrics['majority_test']:.3f}), "
          f"{len(a.updates)} adapted layers, r = {next(iter(a.updates.values())).rank}")
    assert a.metrics["test_acc"] > a.metrics["majority_test"], "each adapter should beat its majority class"

# %% [markdown]
# First the cross terms of section 2 on these adapters: we load all three into one peft model on MiniLM
# and let peft merge them with `linear` (factors) and `cat` (products), weights 1.

# %%
from lorakit.data.models import load_base

def peft_model_with(adapters, tasks):
    """One peft model holding every task's trained factors as a named adapter."""
    cfg = LoraConfig(r=P.rank, lora_alpha=P.alpha, target_modules=list(P.target_modules))
    model = get_peft_model(load_base(P.model, num_labels=2), cfg, adapter_name=tasks[0])
    for t in tasks[1:]:
        model.add_adapter(t, cfg)
    modules = dict(model.base_model.model.named_modules())
    with torch.no_grad():
        for t in tasks:
            for name, u in adapters[t].updates.items():
                modules[name].lora_A[t].weight.copy_(u.A)
                modules[name].lora_B[t].weight.copy_(u.B)
    return model

real = peft_model_with(adapters, tasks)
for t in tasks:                                            # peft now holds exactly the trained factors
    back = read_adapter(real, adapter_name=t)
    assert all(torch.equal(back[m].A, u.A) and torch.equal(back[m].B, u.B) for m, u in adapters[t].updates.items())
true_sum = {m: sum(adapters[t].updates[m].delta() for t in tasks) for m in adapters[tasks[0]].updates}
errors = {}
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for ctype in ("linear", "cat"):
        real.add_weighted_adapter(tasks, [1.0] * len(tasks), ctype, combination_type=ctype)
        merged = read_adapter(real, adapter_name=ctype)
        errors[ctype] = [((merged[m].delta() - true_sum[m]).norm() / true_sum[m].norm()).item() for m in true_sum]
assert max(errors["cat"]) < 1e-5 and min(errors["linear"]) > 100 * max(errors["cat"])
print(f"relative error of ΔW over {len(true_sum)} layers: linear {min(errors['linear']):.2f} … {max(errors['linear']):.2f}, "
      f"cat < 1e-5: {max(errors['cat']) < 1e-5}")

# %% [markdown]
# Now the evaluation. `Evaluator` tokenizes each task's validation and test split once and scores any
# $\{\Delta W\}$ with any task's head; the individual adapters give the normalizer.
#
# **The evaluator, written out.** Scoring a merge means: add $\Delta W^*$ to the adapted weights of the
# pre-trained model, put task $t$'s own head on top, predict, count. `my_score` does exactly that, on a
# copy of the base model, with one padded forward pass. lorakit's `Evaluator.score` does the same
# arithmetic faster (texts sorted by length, padding dropped, the embedding output computed once) and
# leaves the base model untouched. The cell asserts that both give the same accuracy for every task's
# own adapter on both splits, in float32. A profile with `eval_dtype="auto"` (`cpu`) evaluates in bfloat16
# where the CPU multiplies it natively; that flips a few predictions in a thousand, and the cell prints
# by how much accuracy moves.

# %%
# NBVAL_CHECK_OUTPUT
import copy
from lorakit.data.models import load_tokenizer
from lorakit.eval.encoder import Evaluator
from lorakit.eval.scorer import normalized_accuracy
from lorakit.eval.correctness import mean
from lorakit.run.search import method_grid, select_and_report
from lorakit.merge import merge_adapters

ev = Evaluator(tasks, P)
tok = load_tokenizer(P.model)

def my_score(deltas, head, task, split):
    """Accuracy of W_0 + ΔW with `head` on `task`'s `split`: the weights changed on a copy, one HF forward."""
    model = copy.deepcopy(ev.model).eval()
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, delta in deltas.items():
            modules[name].weight += delta.to(modules[name].weight.dtype)       # W_0 + ΔW
        model.classifier = torch.nn.Linear(head["classifier.weight"].shape[1], head["classifier.weight"].shape[0])
        model.classifier.weight.copy_(head["classifier.weight"]); model.classifier.bias.copy_(head["classifier.bias"])
        texts, labels = getattr(ev.data[task], split)
        enc = tok(texts, truncation=True, max_length=P.max_length, padding=True, return_tensors="pt")
        predicted = model(**enc).logits.argmax(-1)
    return float((predicted == torch.tensor(labels)).float().mean())

# the exact comparison is in float32; the profile may evaluate in bfloat16 (`eval_dtype`, `cpu` on AMX)
ev32 = ev if ev.eval_dtype == torch.float32 else Evaluator(tasks, P, eval_dtype="float32")
gap = 0.0
for split in ("val", "test"):
    for t in tasks:
        exact = ev32.score(adapters[t].deltas, adapters[t].head, t, split)
        assert my_score(adapters[t].deltas, adapters[t].head, t, split) == exact
        gap = max(gap, abs(ev.score(adapters[t].deltas, adapters[t].head, t, split) - exact))
assert gap <= 0.01, "bfloat16 should flip only a few predictions in a thousand"
print("my_score == Evaluator.score (float32) for every task's own adapter on val and test:", True)
print(f"the profile's evaluator ({str(ev.eval_dtype).removeprefix('torch.')}) differs by at most {gap:.3f} in accuracy")

# %% [markdown]
# **λ selection, written out.** `select_and_report` tries every point of the grid, keeps the one with the
# best mean normalized accuracy on **validation** (the first one on ties), and only then scores that one
# merge on **test**. `my_select` is that loop; the cell asserts that it chooses the same λ as the package
# for task arithmetic and reports the same test score. (The package also records the whole validation
# curve and, with `extend_edges`, tries one more λ beyond the grid's edge when the best is at the edge.)

# %%
# NBVAL_CHECK_OUTPUT
ind_val, ind_test = ev.individual(adapters, "val"), ev.individual(adapters, "test")
majority = ev.majority("test")
updates = [adapters[t].updates for t in tasks]

def my_select(merge_fn, grid):
    """The grid point with the best mean normalized validation accuracy (first on ties), scored on test."""
    best, best_val = None, -math.inf
    for params in grid:
        val = ev.score_tasks(merge_fn(**params), adapters, "val")
        score = sum(val[t] / ind_val[t] for t in tasks) / len(tasks)
        if score > best_val:
            best, best_val = params, score
    test = ev.score_tasks(merge_fn(**best), adapters, "test")
    return best, sum(test[t] / ind_test[t] for t in tasks) / len(tasks)

ta_fn = lambda **params: merge_adapters(updates, "task_arithmetic", **params)
mine_params, mine_test = my_select(ta_fn, method_grid("task_arithmetic", P))
package = select_and_report(ev, adapters, ta_fn, method_grid("task_arithmetic", P), ind_val, ind_test)
assert mine_params == package["params"] and abs(mine_test - package["avg_normalized"]) < 1e-12
print("my_select chooses the same parameters as select_and_report, with the same test score:", True)

# %% [markdown]
# Now the package, for all four methods:

# %%
methods = ["task_arithmetic", "ties", "dare", "knots"]
records = {}
for m in methods:
    grid = method_grid(m, P)
    records[m] = select_and_report(ev, adapters, lambda **params: merge_adapters(updates, m, **params), grid,
                                   ind_val, ind_test, test_curve=P.test_curves)
    assert records[m]["params"] in grid
    print(f"{m:>15}: chose {records[m]['params']} on validation → test avg normalized {records[m]['avg_normalized']:.3f}")

# %% [markdown]
# For comparison, the factor-averaged merge (peft's `linear`, weights $\lambda$) at the $\lambda$ task
# arithmetic chose — not tuned, just the same $\lambda$, to see what the cross terms do to accuracy:

# %%
lam_ta = records["task_arithmetic"]["params"]["lam"]
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    real.add_weighted_adapter(tasks, [lam_ta] * len(tasks), "linear_lam", combination_type="linear")
linear_deltas = {m: u.delta() for m, u in read_adapter(real, adapter_name="linear_lam").items()}
linear_test = ev.score_tasks(linear_deltas, adapters, "test")
records["peft linear (factors)"] = {"params": {"lam": lam_ta}, "accuracy": linear_test,
                                    "normalized": normalized_accuracy(linear_test, ind_test),
                                    "avg_normalized": mean(normalized_accuracy(linear_test, ind_test).values())}
print(f"factor averaging at λ = {lam_ta}: test avg normalized {records['peft linear (factors)']['avg_normalized']:.3f} "
      f"vs task arithmetic {records['task_arithmetic']['avg_normalized']:.3f}")

# %% [markdown]
# The table: test accuracy per task, and normalized accuracy (merged ÷ individual).

# %%
import pandas as pd

rows = [{"method": "majority class", **majority, "avg normalized": mean(normalized_accuracy(majority, ind_test).values())},
        {"method": "individual adapters", **ind_test, "avg normalized": 1.0}]
for m, rec in records.items():
    rows.append({"method": m, **rec["accuracy"], "avg normalized": rec["avg_normalized"],
                 "chosen": ", ".join(f"{k}={v}" for k, v in rec["params"].items() if k in ("lam", "density", "drop_rate"))})
table = pd.DataFrame(rows).set_index("method")
for m in methods:
    assert mean(records[m]["accuracy"].values()) > mean(majority.values()), f"{m} should beat the majority class on average"
    assert all(abs(records[m]["normalized"][t] - records[m]["accuracy"][t] / ind_test[t]) < 1e-12 for t in tasks)
table.round(3)

# %%
import matplotlib.pyplot as plt

fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.4), gridspec_kw={"width_ratios": [3, 2]})
series = {"individual": ind_test, **{m: records[m]["accuracy"] for m in records}}
width = 0.8 / len(series)
for j, (label, accs) in enumerate(series.items()):
    ax.bar([i + (j - (len(series) - 1) / 2) * width for i in range(len(tasks))], [accs[t] for t in tasks], width,
           label=label, color="0.7" if label == "individual" else None)
ax.hlines([majority[t] for t in tasks], [i - 0.45 for i in range(len(tasks))], [i + 0.45 for i in range(len(tasks))],
          colors="k", linestyles="--", lw=1, label="majority class")
ax.set_xticks(range(len(tasks))); ax.set_xticklabels(tasks); ax.set_ylim(0, 1.32); ax.set_ylabel("test accuracy")
ax.legend(fontsize=7, ncol=4, loc="upper center")
names = list(records)
ax2.bar(range(len(names)), [records[m]["avg_normalized"] for m in names], color=[f"C{j}" for j in range(len(names))])
ax2.axhline(1.0, color="k", ls=":", lw=0.8)
ax2.set_xticks(range(len(names))); ax2.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
ax2.set_ylabel("avg normalized accuracy (test)"); ax2.set_ylim(0, 1.1)
fig.tight_layout();

# %% [markdown]
# What the run says, computed from the numbers above (so it stays true in every profile):

# %%
best = max(methods, key=lambda m: records[m]["avg_normalized"])
scores = sorted(records[m]["avg_normalized"] for m in methods)
print(f"The {len(methods)} baselines span {scores[0]:.3f} to {scores[-1]:.3f} average normalized accuracy on test.")
worst_task = {m: min(tasks, key=lambda t: records[m]["normalized"][t]) for m in methods}
print(f"Best baseline here: {best} ({records[best]['avg_normalized']:.3f} of the individual accuracy on average). "
      f"{sum(records[m]['avg_normalized'] < 1 for m in methods)} of {len(methods)} baselines stay below the individual "
      f"adapters on average; the task that loses most is "
      + ", ".join(f"{t} for {sum(w == t for w in worst_task.values())}" for t in sorted(set(worst_task.values()))) + " of them.")
n_test = min(len(d.test[1]) for d in ev.data.values())
print(f"Resolution: the smallest test split has {n_test} examples, so one example moves a task's accuracy by "
      f"{100 / n_test:.1f} points.")
gap = records["task_arithmetic"]["avg_normalized"] - records["peft linear (factors)"]["avg_normalized"]
print(f"Averaging the factors instead of the products changes the average normalized accuracy by {-gap:+.3f} at the same λ.")

# %% [markdown]
# The gap between the merged and the individual adapters, printed above, is what notebooks 03–05 study:
# where it comes from (magnitudes and directions of the $\Delta W_i$, notebook 03) and how to shrink it
# before fine-tuning (OSRM, 04) or during the merge (DO-Merging, 05). Mind the resolution printed above:
# in the `ci` profile the splits are tiny, so a difference of one or two points between methods is within
# noise; the `cpu` and `gpu` profiles use more tasks and larger splits.
#
# ## 7. Explorer: λ and density against merged accuracy
#
# A table shows one chosen point per method; the slider shows how each task moves as λ (and TIES'
# density) changes. The validation split arbitrates λ; the density was fixed in the selection, so the
# second density here shows what that choice leaves out. The grid is precomputed: the
# validation curves from `select_and_report` above, plus TIES at a second density. Nothing is
# re-evaluated when you move a slider. TIES gets a wider grid than the selection used — λ up to 1.5
# (its disjoint *mean* does not grow with the number of tasks the way a sum does, so its best λ tends to
# be larger than task arithmetic's) and densities 0.2 and 0.5. The other methods show their selection
# grids (in `ci` only the profile's λ values; the `cpu` and `gpu` profiles give the slider more stops).

# %%
from lorakit.course.widgets import explorer_figure, lambda_explorer

split = "test" if P.test_curves else "val"
individual = ind_test if split == "test" else ind_val
curves = {m: list(records[m]["curve"]) for m in methods}
have = [p["params"] for p in curves["ties"]]
for lam in sorted({*P.lam_grid, 1.5}):
    for density in (0.2, 0.5):
        params = {"lam": lam, "density": density}
        if params in have:
            continue                                   # already scored during selection
        deltas = merge_adapters(updates, "ties", **params)
        point = {"params": params}
        for s in ("val", "test") if P.test_curves else ("val",):
            point[f"{s}_accuracy"] = ev.score_tasks(deltas, adapters, s)
        curves["ties"].append(point)
print(f"{sum(len(c) for c in curves.values())} precomputed grid points ({split} accuracies)")

# %% [markdown]
# The static view: TIES at the point chosen in section 6 (●, per-task bars on the left) and the best point
# of the wider grid (★) on the validation curve.

# %%
best_ties = records["ties"]["params"]
explorer_figure(curves, individual, "ties", lam=best_ties["lam"], density=best_ties["density"], split=split);

# %% [markdown]
# Interactive (run the notebook to use it): choose a method, move λ and the density.

# %%
lambda_explorer(curves, individual, split=split)

# %% [markdown]
# ## Exercises
#
# Each checker tests your function on fresh random float64 inputs: return float64 results and leave
# the inputs unchanged (no in-place operations). The solutions are in
# `solutions/02_solutions.ipynb`.
#
# 1. Write `my_ties_sign_mean(stack)`: given already-trimmed task tensors stacked as `(N, ...)`, return
#    TIES' elected-sign disjoint mean (2.3) — vectorised in torch, no Python loop over entries.
# 2. Write `my_dare(tau, p, generator)`: drop each entry with probability `p` (draw the mask from
#    `generator`) and rescale the survivors, so that $\mathbb{E}[\text{my\_dare}(\tau)] = \tau$ (2.4).
# 3. Write `my_cross_term(updates)`: for a list of `LoRAUpdate`s with possibly different scalings, return
#    the cross term $\sum_{i \ne j} \sqrt{s_i s_j}\, B_i A_j$ that averaging the factors (peft's `linear`,
#    weights 1) adds to the true sum (2.2).
# 4. Predict, run, interpret (below the three cells).

# %%
from lorakit.course import exercises

def my_ties_sign_mean(stack):
    raise NotImplementedError  # your code here

try:
    exercises.check_ties_sign_mean(my_ties_sign_mean)
except NotImplementedError:
    print("exercise 1 not attempted yet")

# %%
def my_dare(tau, p, generator):
    raise NotImplementedError  # your code here

try:
    exercises.check_dare_rescale(my_dare)
except NotImplementedError:
    print("exercise 2 not attempted yet")

# %%
def my_cross_term(updates):
    raise NotImplementedError  # your code here

try:
    exercises.check_cross_term(my_cross_term)
except NotImplementedError:
    print("exercise 3 not attempted yet")


# %% [markdown]
# **4. Predict, run, interpret: sign election against a real conflict.** Two task vectors are
# *anti-correlated*: $\tau_2 = -0.5\,\tau_1 + 0.3\,\varepsilon$ (2000 entries, $\varepsilon$ random), so on most
# entries they disagree in sign. TIES was designed for sign conflicts. *Before running the next cell*,
# predict: does TIES (density 1, so only the election and the disjoint mean act, $\lambda = 1$) keep
# **more**, **less** or the **same** of the smaller task $\tau_2$ as task arithmetic, measured by
# $\cos(\Delta W^*, \tau_2)$? Set `prediction` to `"more"`, `"less"` or `"same"`.

# %%
prediction = None  # your prediction: "more", "less" or "same"

# %% [markdown]
# Run the measurement (given): the cosine of each merge with each task.

# %%
# NBVAL_CHECK_OUTPUT
from lorakit.course.exercises.nb02 import anticorrelated_pair, conflict_shares

pair = anticorrelated_pair()
print(f"corr(τ_1, τ_2) = {float(torch.corrcoef(pair)[0, 1]):.2f}")
for name, cosines in conflict_shares(pair).items():
    print(f"{name:>15}: cos(merged, τ_1) = {cosines[0]:.3f}, cos(merged, τ_2) = {cosines[1]:.3f}")

# %% [markdown]
# Interpret: why? Write `my_win_rate(stack)`: for trimmed task tensors stacked as `(N, ...)`, return per
# task the fraction of entries where its sign agrees with TIES' elected sign (2.3), shape `(N,)` (a
# trimmed zero never agrees). The checker tests it against lorakit's `elect_sign`, then compares your
# prediction with the measurement and explains it (any prediction is accepted).

# %%
def my_win_rate(stack):
    raise NotImplementedError  # your code here

try:
    exercises.check_predict_ties_conflict(prediction, my_win_rate)
except NotImplementedError:
    print("exercise 4 not attempted yet")

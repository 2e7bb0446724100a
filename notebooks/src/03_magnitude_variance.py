# %% [markdown]
# # 03 — Magnitude variance
#
# **What you leave with:** the magnitude and the direction of one update $\Delta W$; a
# *scale-free* measure of how much the magnitudes of several tasks' updates differ (the
# **magnitude variance**); that measure for LoRA and for full fine-tuning of the same model on
# the same tasks; and, over every group of two or three tasks, the magnitude variance against how
# well the group merges, with a correlation coefficient.
#
# This notebook tests three claims of DO-Merging (Zheng et al., 2025,
# [arXiv 2505.15875](https://arxiv.org/abs/2505.15875)):
#
# * **(a)** merge methods made for full fine-tuning do worse on LoRA adapters than on full fine-tunes;
# * **(b)** LoRA updates show a much larger parameter-magnitude variance than fully fine-tuned ones;
# * **(c)** a larger magnitude variance goes with worse merging.
#
# We only saw the paper's abstract, not its figures, so the measure below is our own scale-free
# definition (the paper's exact one is not known to us). Whatever comes out here, the notebook prints
# it: the verdicts at the end are computed from a committed multi-seed study (section 5), not
# written in advance. Sections 3 and 4 run the same analysis live, on one seed and a few tasks.
#
# Every equation is followed by a code cell that checks it numerically (an `assert`). Cells
# whose printed output the text cites carry `# NBVAL_CHECK_OUTPUT`.
#
# Runtime, measured from an empty adapter cache with one torch thread on a shared 2-core CPU
# (`data/reference/notebook-runtime/ci-2026-12-03.json`,
# `data/reference/notebook-runtime/cpu-2026-12-03-a.json`): `ci` ≈ 4 min · `cpu` ≈ 13 min · `gpu`
# not measured (no GPU was lent). It trains a full fine-tune per task beside the LoRA adapters, then
# merges every pair of tasks.

# %%
from lorakit.course.notebook import course_tasks, setup, show_progress
P = setup()  # profile from LORAKIT_PROFILE (ci in `make test`), else cpu/gpu

# %% [markdown]
# ## 1. Magnitude and direction of one update
#
# Take one layer's update $\Delta W = s\,BA \in \mathbb{R}^{d_\text{out}\times d_\text{in}}$ (torch
# layout, *(out, in)*). Its **magnitude** is one L2 norm per **input column**, and its
# **direction** is the matrix with every column scaled to unit length:
#
# $$ \alpha_j = \lVert \Delta W[:, j] \rVert_2, \qquad \tilde W[:, j] = \frac{\Delta W[:, j]}{\alpha_j},
#    \qquad \Delta W = \alpha \odot \tilde W \tag{3.1}$$
#
# with $\alpha \in \mathbb{R}^{d_\text{in}}$ broadcast over the rows. The product $\alpha \odot \tilde W$
# gives back $\Delta W$ exactly. A column that is all zero gets a zero direction, not NaN.
#
# **Which axis?** DO-Merging's figure puts one norm on every row of $\Delta W^\top$, i.e. on every
# column of $\Delta W$, so the magnitude has length $d_\text{in}$. That is lorakit's default
# `axis="in"`. DoRA's "column-wise" norm, as peft implements it, is one norm per **output row**
# instead (length $d_\text{out}$). lorakit calls that `axis="out"`. The two readings are easy to mix
# up, so lorakit computes both, and this notebook reports both.

# %%
# NBVAL_CHECK_OUTPUT
import torch
from lorakit.lora.measures import column_magnitudes
from lorakit.lora.update import LoRAUpdate
from lorakit.merge import decouple, recompose

torch.manual_seed(0)
d_out, d_in, r = 6, 4, 2
upd = LoRAUpdate(torch.randn(r, d_in, dtype=torch.float64), torch.randn(d_out, r, dtype=torch.float64), scaling=2.0)
dW = upd.delta()
alpha, W_dir = decouple(dW, axis="in")
assert alpha.shape == (d_in,) and W_dir.shape == (d_out, d_in)
assert torch.allclose(W_dir.norm(dim=0), torch.ones(d_in, dtype=torch.float64))   # unit columns
assert torch.allclose(alpha[None, :] * W_dir, dW)                                 # (3.1): α ⊙ W̃ = ΔW
assert torch.equal(alpha, column_magnitudes(dW, "in"))
alpha_out, W_dir_out = decouple(dW, axis="out")                                   # the DoRA/peft reading
assert alpha_out.shape == (d_out,) and torch.allclose(alpha_out[:, None] * W_dir_out, dW)
dW0 = dW.clone(); dW0[:, 1] = 0                                                   # a zero column
a0, d0 = decouple(dW0)
assert torch.isfinite(d0).all() and (d0[:, 1] == 0).all() and torch.allclose(recompose(a0, d0), dW0)
print("α (axis 'in', length d_in):  ", [round(v, 4) for v in alpha.tolist()])
print("α (axis 'out', length d_out):", [round(v, 4) for v in alpha_out.tolist()])
print("max |α ⊙ W̃ − ΔW| < 1e-12:", (alpha[None, :] * W_dir - dW).abs().max().item() < 1e-12)

# %% [markdown]
# ## 2. A scale-free magnitude variance
#
# $N$ tasks give, in every adapted layer $\ell$, $N$ magnitude vectors $\alpha_{1,\ell}, \dots, \alpha_{N,\ell}$.
# For each input column $j$ we take the **coefficient of variation** across the tasks (population
# standard deviation over the mean), then average over the $d$ columns and the $L$ layers:
#
# $$ \mathrm{MV} = \frac{1}{L}\sum_{\ell=1}^{L} \frac{1}{d}\sum_{j=1}^{d}
#    \frac{\operatorname{std}_i\, \alpha_{i,\ell}[j]}{\operatorname{mean}_i\, \alpha_{i,\ell}[j]},
#    \qquad \operatorname{std}_i\, x_i = \sqrt{\tfrac1N \textstyle\sum_i (x_i - \bar x)^2}. \tag{3.2}$$
#
# Columns that are zero in every task are left out of the mean. Two properties make (3.2) usable:
#
# * **(P1)** it is 0 when every task has the same column norms (directions may differ);
# * **(P2)** it does not change when *every* update is multiplied by the same $c \neq 0$:
#   $\operatorname{std}_i(c\,\alpha_i) / \operatorname{mean}_i(c\,\alpha_i) = \operatorname{std}_i(\alpha_i) / \operatorname{mean}_i(\alpha_i)$.
#
# **Why (P2) matters.** LoRA and full fine-tuning produce updates of very different overall size:
# the learning rate, the scaling $s = \alpha/r$ and the number of steps all set it. A raw spread,
# $\operatorname{std}_i \alpha_i[j]$, grows with that size. Comparing raw spreads of LoRA and full
# fine-tuning would then measure the size of the updates, not how unequal the tasks are.
# Multiplying **one** task by $c$ does change (3.2), and that is exactly the inequality it is meant
# to measure. lorakit's `magnitude_variance` implements (3.2). `kind="frobenius"` uses one number
# per task and layer, $\lVert \Delta W_{i,\ell} \rVert_F$, instead of a column vector.
#
# The cell checks `magnitude_variance` against a plain numpy loop written from (3.2), then checks
# both properties. The toy has three tasks, two layers and $B$ scales $1 : 0.1 : 0.3$.

# %%
# NBVAL_CHECK_OUTPUT
import numpy as np
from lorakit.lora.measures import magnitude_variance

def toy_adapter(seed, scale, layers=("q", "v"), d_out=8, d_in=6, r=2):
    g = torch.Generator().manual_seed(seed)
    return {name: LoRAUpdate(torch.randn(r, d_in, generator=g, dtype=torch.float64),
                             scale * torch.randn(d_out, r, generator=g, dtype=torch.float64), 2.0) for name in layers}

toys = [toy_adapter(1, 1.0), toy_adapter(2, 0.1), toy_adapter(3, 0.3)]

def mv_bruteforce(adapters):                 # (3.2) with explicit loops, numpy only
    per_layer = []
    for name in adapters[0]:
        dense = [ad[name].delta().numpy() for ad in adapters]
        d = dense[0].shape[1]
        cvs = []
        for j in range(d):
            norms = np.array([np.sqrt((D[:, j] ** 2).sum()) for D in dense])
            cvs.append(np.sqrt(((norms - norms.mean()) ** 2).mean()) / norms.mean())
        per_layer.append(np.mean(cvs))
    return float(np.mean(per_layer))

mv = magnitude_variance(toys)
assert abs(mv - mv_bruteforce(toys)) < 1e-12                                   # (3.2)
flipped = [{k: LoRAUpdate(u.A, -u.B, u.scaling) for k, u in toys[0].items()}]  # same norms, opposite direction
assert magnitude_variance([toys[0], *flipped]) < 1e-12                         # (P1)
scaled = [{k: LoRAUpdate(u.A, 7.0 * u.B, u.scaling) for k, u in ad.items()} for ad in toys]
assert abs(magnitude_variance(scaled) - mv) < 1e-12                            # (P2): common scale c = 7

def raw_spread(adapters):                    # the same without dividing by the mean: not scale-free
    return float(np.mean([np.stack([column_magnitudes(ad[n]).numpy() for ad in adapters]).std(0).mean() for n in adapters[0]]))

assert abs(raw_spread(scaled) / raw_spread(toys) - 7.0) < 1e-9                 # the raw spread grows ×7
one_scaled = [scaled[0], *toys[1:]]
assert magnitude_variance(one_scaled) > mv                                     # one task ×7: more unequal
print(f"MV (3.2) = {mv:.6f} | numpy brute force = {mv_bruteforce(toys):.6f}")
print(f"equal magnitudes: MV = {magnitude_variance([toys[0], *flipped]):.1e}")
print(f"every task ×7: MV = {magnitude_variance(scaled):.6f} (unchanged); raw spread ×{raw_spread(scaled) / raw_spread(toys):.3f}")
print(f"task 1 alone ×7: MV = {magnitude_variance(one_scaled):.6f}")
print(f"Frobenius variant: {magnitude_variance(toys, kind='frobenius'):.6f} | axis 'out': {magnitude_variance(toys, axis='out'):.6f}")

# %% [markdown]
# ## 2b. Why a magnitude variance should predict merge error
#
# (3.2) is a definition. Here is why it should matter for merging, derived from the decoupling (3.1)
# (the same one DO-Merging uses in notebook 05). Task arithmetic merges column $j$ of one layer as
#
# $$ \Delta W^*[:, j] = \lambda \sum_{i=1}^{N} \Delta W_i[:, j] = \lambda \sum_{i=1}^{N} \alpha_i[j]\, \tilde W_i[:, j]. $$
#
# **Shares.** Task $i$'s share of that column's magnitude is
#
# $$ w_i[j] = \frac{\alpha_i[j]}{\sum_k \alpha_k[j]}, \qquad \sum_i w_i[j] = 1 . \tag{3.3}$$
#
# Equal magnitudes give every task the fair share $1/N$. Since $\alpha_i[j] = \big(\sum_k \alpha_k[j]\big)\, w_i[j]$,
# the standard deviation over tasks is $\operatorname{std}_i \alpha_i[j] = \big(\sum_k \alpha_k[j]\big) \operatorname{std}_i w_i[j]$
# and the mean is $\operatorname{mean}_i \alpha_i[j] = \big(\sum_k \alpha_k[j]\big) / N$. Their ratio is
#
# $$ \frac{\operatorname{std}_i \alpha_i[j]}{\operatorname{mean}_i \alpha_i[j]} = N \operatorname{std}_i w_i[j] . \tag{3.3'}$$
#
# So the magnitude variance (3.2) is $N$ times the spread of the tasks' shares around the fair share,
# averaged over columns and layers. It measures how unequal the tasks' say in each merged column is.
#
# **Interference.** Task $k$ needs its own part $\alpha_k[j]\,\tilde W_k[:, j]$ of the column. It also
# receives everyone else's, $\sum_{i \ne k} \alpha_i[j]\, \tilde W_i[:, j]$. Assume the unit directions
# $\tilde W_i[:, j]$ of different tasks are orthogonal. (Independent random directions in $d_\text{out} = 384$
# dimensions have cosines of about $\pm 1/\sqrt{384} \approx 0.05$; the cell after section 3 measures the real
# ones.) Then the energies add, and the **interference-to-signal ratio** of task $k$ in column $j$ is
#
# $$ R_k[j] = \frac{\lVert \sum_{i \ne k} \alpha_i[j]\,\tilde W_i[:, j] \rVert^2}{\lVert \alpha_k[j]\,\tilde W_k[:, j] \rVert^2}
#    = \frac{\sum_{i \ne k} \alpha_i[j]^2}{\alpha_k[j]^2} = \frac{S_j}{\alpha_k[j]^2} - 1, \qquad S_j = \sum_i \alpha_i[j]^2 . \tag{3.4}$$
#
# A quiet task, one with a small share, is drowned: its $R_k$ is large. Now average over the tasks. Write
# $\overline{x}$ for the mean over $k$, so that $S_j = N\,\overline{\alpha^2}$:
#
# $$ \bar R[j] = \frac1N \sum_k R_k[j] = N\, \overline{\alpha^2}\;\overline{\alpha^{-2}} - 1 \;\ge\; N - 1 . \tag{3.5}$$
#
# The bound is Cauchy–Schwarz, $1 = \big(\overline{\alpha \cdot \alpha^{-1}}\big)^2 \le \overline{\alpha^2}\;\overline{\alpha^{-2}}$,
# with equality exactly when all $\alpha_k[j]$ are equal. So $N - 1$ is the interference that any $N$ tasks
# with orthogonal directions pay, and everything above it comes from unequal magnitudes. How much above?
# Write $\alpha_k = m(1 + \varepsilon_k)$ with $\overline{\varepsilon} = 0$ and $\overline{\varepsilon^2} = c_j^2$,
# where $c_j$ is the column's coefficient of variation, the term inside (3.2). Then
# $\overline{\alpha^2} = m^2(1 + c_j^2)$ and $\overline{\alpha^{-2}} = m^{-2}\big(1 + 3c_j^2 + O(\varepsilon^3)\big)$
# (the Taylor series $(1+\varepsilon)^{-2} = 1 - 2\varepsilon + 3\varepsilon^2 - \dots$). Multiplying,
#
# $$ \bar R[j] = N - 1 + 4N\,c_j^2 + O(c_j^3) . \tag{3.6}$$
#
# What this says, and what it does not:
#
# * The excess interference grows with the **square** of each column's coefficient of variation. (3.2)
#   averages $c_j$, not $c_j^2$, so it is a monotone summary, not the exact quantity.
# * Both the floor $N - 1$ and the factor $4N$ grow with $N$. Groups of different sizes are therefore
#   not comparable, and section 4 compares groups of equal size only.
# * It is a statement about the weights, under orthogonal directions. It predicts that unequal
#   magnitudes drown the quiet tasks, not by how much accuracy falls. Section 4 measures that.
#
# The cell checks (3.3') and (3.4)–(3.6) with `lorakit.lora.measures` (`magnitude_shares`,
# `interference_from_magnitudes`, `interference_exact`) on updates built with exactly orthogonal column
# directions.

# %%
# NBVAL_CHECK_OUTPUT
from lorakit.lora.measures import interference_exact, interference_from_magnitudes, layer_magnitude_variance, magnitude_shares

g = torch.Generator().manual_seed(3)
N, d_out_t, d_t = 4, 16, 5
mags_t = 0.5 + torch.rand(N, d_t, generator=g, dtype=torch.float64)
cols = torch.zeros(N, d_out_t, d_t, dtype=torch.float64)
for j in range(d_t):                                          # fresh orthonormal directions per column
    Q, _ = torch.linalg.qr(torch.randn(d_out_t, N, generator=g, dtype=torch.float64))
    cols[:, :, j] = (mags_t[:, j, None] * Q.T)
w = magnitude_shares(mags_t)
assert torch.allclose(w.sum(0), torch.ones(d_t, dtype=torch.float64))                  # (3.3)
cv = mags_t.std(0, correction=0) / mags_t.mean(0)
assert torch.allclose(cv, N * w.std(0, correction=0))                                    # (3.3')
R_exact = interference_exact(list(cols))                                                 # from the vectors
R_mags = interference_from_magnitudes(mags_t)                                            # (3.4) from α alone
assert torch.allclose(R_exact, R_mags)
assert R_mags.mean() >= N - 1                                                            # (3.5)
eq = interference_from_magnitudes(torch.ones(N, d_t, dtype=torch.float64))
assert torch.allclose(eq, torch.full((N,), N - 1.0, dtype=torch.float64))                # equality at equal α
eps = 0.02 * (torch.rand(N, d_t, generator=g, dtype=torch.float64) - 0.5)
near = 1 + eps - eps.mean(0)
c2 = ((near.std(0, correction=0) / near.mean(0)) ** 2).mean()
assert abs(interference_from_magnitudes(near).mean() - (N - 1 + 4 * N * c2)) < 1e-5    # (3.6)
print("shares of column 0:", [round(v, 3) for v in w[:, 0].tolist()], "| fair share 1/N =", 1 / N)
print("R_k from the vectors:", [round(v, 3) for v in R_exact.tolist()])
print("R_k from (3.4):      ", [round(v, 3) for v in R_mags.tolist()])
print(f"mean R = {R_mags.mean():.3f} ≥ N − 1 = {N - 1}; equal magnitudes: {eq.mean():.3f}")

# %% [markdown]
# ## 3. LoRA versus full fine-tuning: same model, same tasks, same layers
#
# Now the real thing. For each of the profile's course tasks (`course_tasks(P)`: `ci` three, `cpu` five
# of its eight) we train two models from the same packaged
# MiniLM encoder, with the same training examples, batch order (seed 0 mixed with the task
# name), number of steps and target modules (`query` and `value` of all 6 layers):
#
# * **LoRA** (`train_adapter`): trains $A$ and $B$ ($r = 8$, $\alpha = 16$), $\Delta W = s\,BA$ of rank ≤ 8;
# * **full fine-tuning** (`train_full`): trains every entry of those same weight matrices,
#   $\Delta W = W_\text{ft} - W_0$ (full rank). lorakit stores it as a `LoRAUpdate` with $A = I$, $B = \Delta W$,
#   $s = 1$, so every analysis and merge below applies to it unchanged.
#
# Both train their own classification head with the profile's learning rate. Full fine-tuning updates
# the weight matrices with the profile's learning rate ÷ 20 (`train_full`'s default): every entry
# of $W$ is free, so it needs much smaller steps than the low-rank factors. The first run trains
# and caches everything; later runs load it from disk.
#
# A family that did not learn a task has an update that says nothing about that task, so the
# comparison keeps a task only where **both** families beat its majority-class baseline by at least
# 10 points; the cell prints which tasks it drops (with one untuned learning rate, full fine-tuning
# sometimes stays near the majority rate; the magnitude-variance study, `lorakit.run.mv_study`, sweeps
# full FT's learning rate and applies the same rule). LoRA must learn every task.

# %%
import math
import time
from lorakit.train.encoder import train_adapter, train_full

tasks = course_tasks(P)  # the profile's course tasks (cpu: 5 of its 8; lorakit.course.notebook.course_tasks)
t0 = time.perf_counter()
lora = {t: train_adapter(t, P, progress=show_progress(P)) for t in tasks}
full = {t: train_full(t, P, progress=show_progress(P)) for t in tasks}
families = {"LoRA": lora, "full FT": full}
print(f"{'task':>16} | majority | LoRA acc | full FT acc | LoRA train | full FT train")
for t in tasks:
    maj = lora[t].metrics["majority_test"]
    print(f"{t:>16} |   {maj:.3f}  |  {lora[t].metrics['test_acc']:.3f}   |    {full[t].metrics['test_acc']:.3f}    |"
          f" {lora[t].metrics['seconds']:.0f} s | {full[t].metrics['seconds']:.0f} s")
    assert lora[t].metrics["test_acc"] > maj + 0.1, f"LoRA on {t} should clearly beat the majority class"
print(f"(training times as measured when each model was trained; this cell took {time.perf_counter() - t0:.0f} s)")

learned = [t for t in tasks if all(ads[t].metrics["test_acc"] >= ads[t].metrics["majority_test"] + 0.1
                                   for ads in families.values())]
dropped = [t for t in tasks if t not in learned]
print(f"compared below: {len(learned)} of {len(tasks)} tasks; dropped (a family within 10 points of majority): "
      f"{', '.join(dropped) if dropped else 'none'}")
assert len(learned) >= 2, "claim (b) needs at least two tasks that both families learned"

# %% [markdown]
# From here on, section 3 uses only the tasks both families learned (`learned`). How big are their updates? Per task, we
# report $\lVert \Delta W \rVert_F$ over all adapted layers, $\sqrt{\sum_\ell \lVert \Delta W_\ell \rVert_F^2}$.
# Then we report the magnitude variance (3.2) of the family's tasks, along both axes and in the
# Frobenius variant.

# %%
def total_norm(adapter):
    return float(sum(u.delta(torch.float64).norm() ** 2 for u in adapter.updates.values()) ** 0.5)

norms = {fam: {t: total_norm(ads[t]) for t in learned} for fam, ads in families.items()}
variants = {"column, axis 'in'": dict(axis="in"), "column, axis 'out'": dict(axis="out"), "Frobenius": dict(kind="frobenius")}
mvs = {fam: {v: magnitude_variance([ads[t].updates for t in learned], **kw) for v, kw in variants.items()}
       for fam, ads in families.items()}
print(f"{'task':>16} | ‖ΔW‖_F LoRA | ‖ΔW‖_F full FT | ratio")
for t in learned:
    print(f"{t:>16} |   {norms['LoRA'][t]:8.3f}  |   {norms['full FT'][t]:8.3f}     | {norms['LoRA'][t] / norms['full FT'][t]:5.2f}")
print(f"\n{'magnitude variance':>20} |   LoRA | full FT | LoRA ÷ full FT")
for v in variants:
    print(f"{v:>20} | {mvs['LoRA'][v]:.4f} |  {mvs['full FT'][v]:.4f} | {mvs['LoRA'][v] / mvs['full FT'][v]:.2f}")
for fam in families:
    assert all(np.isfinite(list(mvs[fam].values()))) and min(mvs[fam].values()) >= 0

def describe_b(mv_lora, mv_full):
    """What this run shows for claim (b): the ratio of the two magnitude variances (axis 'in'). One seed
    and a few tasks give no CI, hence no verdict (section 5's study gives one)."""
    return (f"LoRA's magnitude variance is {mv_lora / mv_full:.2f}× that of full fine-tuning "
            f"(one seed, {len(learned)} tasks: no CI, so no verdict; see section 5)")

verdict_b = describe_b(mvs["LoRA"]["column, axis 'in'"], mvs["full FT"]["column, axis 'in'"])
print(f"\nclaim (b), {len(learned)} tasks, profile {P.name}: {verdict_b}")

# %% [markdown]
# The cell above prints what this run shows for claim (b): one seed, so a ratio, not a verdict. Two
# things to notice:
#
# * The two families' updates can differ a lot in size (compare the ‖ΔW‖_F columns). Only a scale-free
#   measure can compare them. Thanks to (P2), a difference in size by itself does not move the
#   magnitude variance.
# * The comparison is per layer and per column. The figure shows the magnitude variance of every
#   adapted layer for both families (left), and the size of every layer's update per task (right, log
#   scale).
#
# Why might LoRA's magnitudes vary more? One hypothesis, **not tested here**: Adam makes every entry
# of a fully fine-tuned $W$ move by roughly the same amount per step, whatever the task. In LoRA,
# Adam normalises the steps of $A$ and $B$, not of their product $BA$.

# %%
import matplotlib.pyplot as plt

layer_names = list(lora[tasks[0]].updates)
short = [n.replace("bert.encoder.layer.", "L").replace(".attention.self.", " ") for n in layer_names]
per_layer = {fam: magnitude_variance([ads[t].updates for t in learned], per_layer=True) for fam, ads in families.items()}
fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
x = np.arange(len(layer_names))
for k, fam in enumerate(families):
    axes[0].bar(x + (k - 0.5) * 0.4, [per_layer[fam][n] for n in layer_names], width=0.4, label=fam)
    for i, t in enumerate(learned):
        axes[1].semilogy(x, [families[fam][t].updates[n].delta(torch.float64).norm().item() for n in layer_names],
                         ["o-", "s--"][k], color=f"C{i}", label=f"{t} ({fam})", ms=4)
axes[0].set_xticks(x); axes[0].set_xticklabels(short, rotation=60, fontsize=7)
axes[0].set_ylabel("magnitude variance (3.2)"); axes[0].set_title("per layer, across tasks"); axes[0].legend()
axes[1].set_xticks(x); axes[1].set_xticklabels(short, rotation=60, fontsize=7)
axes[1].set_ylabel("‖ΔW_ℓ‖_F"); axes[1].set_title("size of each layer's update"); axes[1].legend(fontsize=6, ncol=2)
fig.tight_layout();

# %% [markdown]
# ### The same numbers from `lorakit diagnose`
#
# `lorakit diagnose ADAPTER...` looks at PEFT adapters *before* they are merged: per layer and
# overall, each adapter's $\lVert \Delta W \rVert_F$, the magnitude variance, the cosines of the
# $\Delta W$, the overlap of the $A$ subspaces, a data-free estimate of the interference, and a
# short verdict on which method the numbers favour. Its function `lorakit.adapters.diagnose.diagnose_adapters`
# works on the adapters trained above, from the factors $A$ and $B$ (it never forms $\Delta W$). It
# takes every task's LoRA adapter (the cell above only those both families learned), and the cell
# checks its magnitude variances against (3.2) computed directly.
#
# Two of its numbers go beyond (3.2):
#
# * **the pairwise magnitude variance**, the mean of (3.2) over all pairs of tasks. (3.2) uses the
#   population standard deviation of $N$ values, so for tasks drawn from one distribution it
#   grows with $N$ by itself. The mean over pairs has the same expectation for every $N$, and it
#   equals (3.2) when $N = 2$;
# * **the $A$ overlap** $\lVert P_i P_j \rVert_F^2 / r$, with $P_i$ the orthogonal projector on the
#   row space of $A_i$, the inputs task $i$'s LoRA reads. It is 1 for the same subspace and about
#   $r / d_\text{in}$ for random ones.
#
# The profiles give every task its own seed (`task_seeds="per_task"`), so every task's $A$ starts
# from its own random draw. With `task_seeds="shared"`, the ablation that one `set_seed` before every
# fine-tune gives, two tasks with the same number of labels would start from the identical $A$.
# Training moves $A$, so their overlap would fall below 1, but it would stay far above that of the
# other pairs. The entry-by-entry cosine of the two $A$ matrices shows a shared start more sharply:
# about $\pm 1/\sqrt{r\,d_\text{in}}$ for two independent random starts, far more for one shared
# start. `diagnose_adapters` warns about such pairs (A cosine ≥ 0.3 or overlap ≥ 0.5).
#
# The cell checks that `diagnose_adapters` reports exactly the magnitude variances computed above
# with `lorakit.lora.measures`, and the $A$ overlap that `lorakit.lora.measures.subspace_overlap` computes
# from dense projectors.

# %%
from lorakit.lora.measures import magnitude_variance_pairwise, subspace_overlap
from lorakit.stats.correlation import spearman_rho
from lorakit.adapters.diagnose import diagnose_adapters

lora_updates = [lora[t].updates for t in tasks]
diagnosis = diagnose_adapters(lora_updates, names=tasks)
keys = {"column, axis 'in'": "column_in", "column, axis 'out'": "column_out", "Frobenius": "frobenius"}
for v, key in keys.items():                                       # (3.2) of every task's LoRA adapter
    direct = magnitude_variance(lora_updates, **variants[v])
    assert abs(diagnosis.overall["magnitude_variance"][key] - direct) < 1e-9 * max(1.0, direct)
assert abs(diagnosis.overall["magnitude_variance_pairwise"]["column_in"] - magnitude_variance_pairwise(lora_updates)) < 1e-9
assert np.allclose(diagnosis.overall["a_overlap"], subspace_overlap(lora_updates).numpy(), atol=1e-9)
print(f"{'magnitude variance':>20} | (3.2), as above | pairwise (bias-free in N)")
for v, key in keys.items():
    print(f"{v:>20} |      {diagnosis.overall['magnitude_variance'][key]:.4f}     |   "
          f"{diagnosis.overall['magnitude_variance_pairwise'][key]:.4f}")
print(f"\nA overlap | A cosine, means over layers (random subspaces overlap ~{diagnosis.overall['a_overlap_random']:.3f}):")
for i, t in enumerate(tasks):
    print(f"{t:>16} | " + "  ".join(f"{diagnosis.overall['a_overlap'][i][j]:.3f}" for j in range(len(tasks)))
          + " | " + "  ".join(f"{diagnosis.overall['a_cosine'][i][j]:+.3f}" for j in range(len(tasks))))
print("\n" + diagnosis.verdict.text())

# %% [markdown]
# ### The derivation on the real adapters
#
# Does the orthogonality assumption behind (3.4) hold for the trained LoRA updates? For every adapted
# layer and every pair of tasks, the cell takes the cosines between the two tasks' unit column
# directions $\tilde W_i[:, j]$ and $\tilde W_k[:, j]$, and reports their mean absolute value. Then it
# compares, per task, $R_k$ predicted from the magnitudes alone by (3.4) with $R_k$ measured on the real
# columns, cross terms included (`interference_exact`). Both are averaged over columns and layers.

# %%
from lorakit.merge import decouple

dirs = {n: torch.stack([decouple(lora[t].updates[n].delta(torch.float64), axis="in")[1] for t in tasks])
        for n in layer_names}                                                  # (N, d_out, d_in) unit columns
iu = torch.triu_indices(len(tasks), len(tasks), offset=1)
abs_cos = float(torch.stack([torch.einsum("iaj,kaj->ikj", D, D)[iu[0], iu[1]].abs().mean() for D in dirs.values()]).mean())
layer_mags = {n: torch.stack([column_magnitudes(lora[t].updates[n]) for t in tasks]) for n in layer_names}
R_pred = torch.stack([interference_from_magnitudes(m) for m in layer_mags.values()]).mean(0)
R_meas = torch.stack([interference_exact([lora[t].updates[n] for t in tasks]) for n in layer_names]).mean(0)
share = torch.stack([magnitude_shares(m).mean(1) for m in layer_mags.values()]).mean(0)
d_out_real = next(iter(dirs.values())).shape[1]
print(f"mean |cos| between two tasks' column directions: {abs_cos:.3f} (independent random: ≈ {(2 / math.pi / d_out_real) ** 0.5:.3f})")
print(f"{'task':>16} | mean share (fair {1 / len(tasks):.3f}) | R_k from (3.4) | R_k measured")
for k, t in enumerate(tasks):
    print(f"{t:>16} |        {share[k]:.3f}            |    {R_pred[k]:7.2f}     |   {R_meas[k]:7.2f}")
rho_pred = spearman_rho(R_pred.tolist(), R_meas.tolist())
rho_share = spearman_rho(share.tolist(), R_meas.tolist())
print(f"mean over tasks: predicted {R_pred.mean():.2f}, measured {R_meas.mean():.2f} (floor N − 1 = {len(tasks) - 1})")
print(f"Spearman ρ(predicted R_k, measured R_k) = {rho_pred:+.2f}; ρ(mean share, measured R_k) = {rho_share:+.2f}")
assert R_pred.mean() >= len(tasks) - 1 - 1e-9                                  # (3.5) holds for any magnitudes
assert rho_pred > 0, "the prose below says: (3.4) ranks the tasks' interference as the measurement does"
print("the mean share alone", "ranks them the same way (smaller share, larger R_k)" if rho_share < 0 else
      "does not rank them: R_k is a mean of ratios, dominated by the columns where task k is quietest")

# %% [markdown]
# Read the table with (3.4) in mind. The ratios predicted from the magnitudes alone rank the tasks
# as the measured ones do: the printed ρ(predicted, measured) is positive, and the cell asserts it.
# A task's *mean* share is a coarser summary: $R_k$ averages $\sum_{i \ne k} \alpha_i[j]^2 / \alpha_k[j]^2$ over
# columns, and that mean is dominated by the few columns where task $k$ is quietest, which a mean
# share averages away (the last printed line says whether it ranked the tasks anyway in this run).
# How close the measured ratios come to the predicted ones depends on the printed mean |cos|. Near
# the random level, the cross terms that (3.4) drops are small. Above it, the directions are partly
# aligned, and the cross terms add (same sign) or cancel (opposite signs). Section 4 asks whether
# groups with more unequal magnitudes also *merge* worse.

# %% [markdown]
# ## 4. Magnitude variance against merged accuracy, over many task groups
#
# Claim (c) relates the magnitude variance of a **set of tasks** to how well that set merges. One
# set gives one point, so we use every **pair** of the profile's tasks. (3.5) and (3.6) say why pairs
# only: the interference floor $N - 1$ grows with the group size $N$, so groups of different sizes
# differ for that reason alone, whatever their magnitudes. The `ci` profile's 3 tasks give 3 pairs; the
# `cpu` profile's five course tasks give 10 (its benchmark has eight; `lorakit.course.notebook.course_tasks`). For
# each pair $G$ of LoRA adapters:
#
# * $x_G$ = the magnitude variance (3.2) of the group's updates;
# * $y_G$ = the merged **normalized accuracy**: task arithmetic
#   $W = W_0 + \lambda \sum_{i \in G} \Delta W_i$, with $\lambda$ chosen on the validation split
#   from the profile's grid. We report, on the test split, the mean over $i \in G$ of
#   $\text{acc}_i(\text{merged}) / \text{acc}_i(\text{task } i\text{'s own adapter})$.
#
# Across the groups we compute the Pearson $r$ and the Spearman $\rho$ (Pearson of the ranks) with
# `lorakit.stats.correlation.group_correlation`. Its p-values count how many re-pairings of the $y$ values
# with the $x$ values correlate at least as strongly. Groups that share tasks are not independent,
# so those p-values are optimistic.
#
# Every group costs a few merged-model evaluations, and evaluation dominates the run time. That is
# why the live run uses the LoRA pairs only. Section 5's study adds triples, eight tasks, several seeds
# and claim (a): merging the full fine-tunes too.

# %%
from itertools import combinations
from lorakit.stats.correlation import group_correlation
from lorakit.eval.encoder import Evaluator
from lorakit.run.search import method_grid, select_and_report
from lorakit.merge import merge_adapters

t0 = time.perf_counter()
ev = Evaluator(tasks, P)
groups = list(combinations(tasks, 2))  # pairs: equal N (see (3.5))
grid = method_grid("task_arithmetic", P)
ind_val, ind_test = ev.individual(lora, "val"), ev.individual(lora, "test")

def group_point(group, adapters):
    """Magnitude variance of the group and its task-arithmetic normalized test accuracy (λ on validation)."""
    updates = [adapters[t].updates for t in group]
    rec = select_and_report(ev, {t: adapters[t] for t in group},
                            lambda lam: merge_adapters(updates, "task_arithmetic", lam=lam), grid, ind_val, ind_test)
    return {"group": list(group), "mv": magnitude_variance(updates), "normalized": rec["avg_normalized"],
            "lam": rec["params"]["lam"]}

from tqdm.auto import tqdm
points = [group_point(g, lora) for g in tqdm(groups, desc="merging pairs", disable=not show_progress(P))]
print(f"{'LoRA pair':<54} |     MV | normalized | λ")
for p in points:
    print(f"{' + '.join(p['group']):<54} | {p['mv']:.4f} |   {p['normalized']:.3f}    | {p['lam']}")
    assert np.isfinite(p["mv"]) and 0 < p["normalized"] < 1.5
print(f"({len(groups)} pairs, λ grid {[g['lam'] for g in grid]}, {time.perf_counter() - t0:.0f} s)")

# %%
import math

def claim_c(c):
    """The verdict on claim (c), computed from the correlation over LoRA groups."""
    if c["n"] < 10:
        floor = 2 / math.factorial(c["n"])
        return (f"{c['n']} groups are far too few to conclude anything: even a perfect rank order would have "
                f"a permutation p-value of at least {floor:.3f}")
    rho, p_rho = c["spearman"], c["spearman_p"]
    direction = "higher variance goes with worse merging" if rho < 0 else "higher variance goes with *better* merging"
    strength = "unlikely under random pairing" if p_rho < 0.05 else "weak: it could be chance"
    return f"Spearman ρ = {rho:+.2f} over {c['n']} groups: {direction}; {strength} (p = {p_rho:.3f})"

def show_correlation(name, c):
    print(f"{name:>8}: n = {c['n']:2d} groups | Pearson r = {c['pearson']:+.3f} (p = {c['pearson_p']:.3f}) | "
          f"Spearman ρ = {c['spearman']:+.3f} (p = {c['spearman_p']:.3f})")

corr = group_correlation([p["mv"] for p in points], [p["normalized"] for p in points])
show_correlation("LoRA", corr)
verdict_c = claim_c(corr)
print(f"claim (c), profile {P.name}: {verdict_c}")

# %%
fig, ax = plt.subplots(figsize=(5.2, 3.6))
ax.scatter([p["mv"] for p in points], [p["normalized"] for p in points], color="C0",
           label=f"LoRA pairs (ρ = {corr['spearman']:+.2f}, n = {corr['n']})")
ax.set_xlabel("magnitude variance of the pair (3.2)"); ax.set_ylabel("merged normalized accuracy (TA)")
ax.set_title(f"task pairs, profile {P.name}"); ax.legend(fontsize=7);

# %% [markdown]
# ## 5. The study that decides claims (a), (b) and (c)
#
# Sections 3 and 4 show the analysis on one seed and a few tasks: the numbers are real, but they cannot
# decide anything. What decides the claims is `tools/mv_study.py` (`lorakit.run.mv_grid.run_study`), run on
# the `cpu` profile and committed as `data/reference/mv_study_cpu.json` with the machine, the date and
# the exact command. The cells below only read that file (`lorakit.results.mv_study`). They do not recompute
# its numbers, and those numbers do not come from the profile this notebook runs in. The study
# differs from sections 3 and 4 in four ways:
#
# * **Full fine-tuning, tuned.** Each task is fully fine-tuned at four learning rates (the default
#   lr ÷ 20, times 1/3, 1, 3 and 10) on the first seed. The rate with the best *validation* accuracy is
#   then trained on every seed. A task is kept only where that model beats the validation majority rate
#   by at least 10 points. Otherwise it is excluded from (a) and (b), and the table says so.
# * **Several seeds, each task from its own seed.** LoRA and full FT are both trained on every seed,
#   with the seed mixed with the task name.
# * **A measure that does not grow with N.** (3.2) takes the population standard deviation of $N$
#   values, which grows with $N$ by itself. (b) and (c) use the **pairwise** magnitude variance of
#   section 3 (`magnitude_variance_pairwise`): the mean of (3.2) over every pair of tasks. Its
#   expectation is the same for every $N$.
# * **A CI and a three-valued verdict per claim** (`lorakit.stats.paired.verdict`): *held* when the 95 % CI
#   excludes 0 in the paper's direction, *contradicted* when it excludes 0 the other way, and
#   *inconclusive* otherwise.
#
# The claims, and the statistic that decides each one:
#
# * **(a)** LoRA adapters merge worse than full fine-tunes. All kept tasks are merged at once with task
#   arithmetic, TIES and DARE, once as LoRA adapters and once as full-FT task vectors. Each family's
#   λ (then density or drop rate) is chosen on validation with the same grid. The effect is the
#   normalized test accuracy of LoRA minus that of full FT, with a paired bootstrap over seeds × test
#   examples. The paper says it is below 0, and (a) is held only if every method says so.
# * **(b)** LoRA's magnitudes vary more across tasks. Per seed: the pairwise magnitude variance of LoRA
#   minus that of full FT, over the same kept tasks, with a paired t interval over seeds. A bootstrap
#   over tasks checks that a few tasks do not carry the difference. The paper says it is above 0.
# * **(c)** A larger magnitude variance goes with a worse merge. Every group of 2 and of 3 of the 8 tasks
#   (28 + 56 groups) is merged by task arithmetic with λ chosen on validation. The cells report
#   Spearman's ρ within each group size with a bootstrap CI, and ρ without each task. The verdict comes
#   from a regression with **task fixed effects**: $y_G = \beta x_G + \delta\,[|G| = 3] + \tfrac{1}{|G|}\sum_{t\in G}\gamma_t$.
#   Each task's $\gamma_t$ absorbs its own effect on every group it is in, so a task that both raises
#   $x$ and lowers $y$ can no longer make $\beta$ negative on its own. The paper says $\beta < 0$.

# %%
# NBVAL_CHECK_OUTPUT
from lorakit.results.mv_study import claim_a_rows, claim_c_rows, full_ft_rows, load_mv_study, mv_verdict_sentences

study = load_mv_study("cpu")
m = study["machine"]
print(f"REFERENCE (profile {study['profile']}, not this run): {study['date']}, {m.get('cpu_model', m.get('processor'))}, "
      f"torch {m['torch']}, {study['seconds']['total'] / 60:.0f} min")
print(f"command: {study['command']}")
print(f"{len(study['tasks'])} tasks, seeds {study['seeds']} ({study['task_seeds']}), claim (c) on seeds {study['claim_c']['seeds']}")
print(f"full FT rule: {study['full_ft_rule']}")
print(f"\n{'task':>16} | full-FT lr | val acc | val majority | test acc | kept")
for r in full_ft_rows(study):
    edge = " (edge of the sweep)" if r["at_edge"] else ""
    print(f"{r['task']:>16} | {r['lr']:.2e}   |  {r['val_acc']:.3f}  |    {r['majority_val']:.3f}     |"
          f"  {r['test_acc']:.3f}   | {'yes' if r['kept'] else 'NO'}{edge}")
lora_test = {t: np.mean([study["individual"]["lora"][str(s)]["test"][t] for s in study["seeds"]]) for t in study["tasks"]}
print("LoRA test accuracy (mean over seeds): " + ", ".join(f"{t} {a:.3f}" for t, a in lora_test.items()))
assert len(study["tasks"]) >= 8 and len(study["seeds"]) >= 3 and study["task_seeds"] == "per_task"
assert set(study["kept_tasks"]) | set(study["excluded_tasks"]) == set(study["tasks"])

# %% [markdown]
# **Claim (a).** Each row is one merge method: the mean normalized accuracy over seeds of the merged
# LoRA adapters and of the merged full fine-tunes, their difference, its CI and the verdict.

# %%
# NBVAL_CHECK_OUTPUT
print(f"{'method':>16} | LoRA merged | full FT merged | LoRA − full FT (95 % CI)     | verdict")
for r in claim_a_rows(study):
    print(f"{r['method']:>16} |    {r['lora']:.3f}    |     {r['full_ft']:.3f}     | "
          f"{r['effect']:+.3f} [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]     | {r['verdict']}")
    assert r["ci"][0] <= r["effect"] <= r["ci"][1]
print(f"claim (a) over the methods: {study['verdicts']['a']} ({len(study['kept_tasks'])} kept tasks merged at once)")

# %% [markdown]
# **Claim (b).** Per seed, the pairwise magnitude variance of each family over the kept tasks.

# %%
# NBVAL_CHECK_OUTPUT
b = study["claim_b"]
print(f"{'seed':>5} | LoRA  | full FT | LoRA − full FT")
for s, lo, fu in zip(b["seeds"], b["mv_per_seed"]["lora"], b["mv_per_seed"]["full_ft"]):
    print(f"{s:>5} | {lo:.3f} |  {fu:.3f}  | {lo - fu:+.3f}")
print(f"difference {b['effect']:+.3f}, 95 % CI [{b['ci'][0]:+.3f}, {b['ci'][1]:+.3f}] ({b['ci_method']}): {b['verdict']}")
print(f"bootstrap over tasks: CI [{b['over_tasks']['ci'][0]:+.3f}, {b['over_tasks']['ci'][1]:+.3f}] → {b['over_tasks']['verdict']}")
assert abs(b["effect"] - (np.mean(b["mv_per_seed"]["lora"]) - np.mean(b["mv_per_seed"]["full_ft"]))) < 1e-9

# %% [markdown]
# **Claim (c).** One row per group size, then the fixed-effects slope. The last columns show how far
# ρ moves when every group containing one task is left out: the task that moves it most, and ρ without it.

# %%
# NBVAL_CHECK_OUTPUT
c_study = study["claim_c"]
print(f"{'size':>4} | groups | Spearman ρ (95 % CI)   | perm. p | verdict      | ρ without one task | moved most by")
for r in claim_c_rows(study):
    if r["spearman"] is None or r["ci"] is None or None in r["ci"]:
        print(f"{r['size']:>4} | {r['n']:>6} | too few groups for ρ and its CI")
        continue
    print(f"{r['size']:>4} | {r['n']:>6} | {r['spearman']:+.2f} [{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}]    |  {r['p']:.3f}  |"
          f" {r['verdict']:<12} | {r['loto_min']:+.2f} … {r['loto_max']:+.2f}      | {r['carrier']} ({r['without_carrier']:+.2f})")
fe = c_study["fixed_effects"] or {"slope": float("nan"), "ci": [float("nan")] * 2, "n": len(c_study["points"]), "df": 0}
print(f"fixed effects: β = {fe['slope']:+.3f}, 95 % CI [{fe['ci'][0]:+.3f}, {fe['ci'][1]:+.3f}] "
      f"(n = {fe['n']} groups, {fe['df']} residual df): {c_study['verdict']}")
assert len(c_study["points"]) == 28 + 56 and c_study["by_size"]["2"]["n"] == 28

# %%
fig, ax = plt.subplots(figsize=(5.6, 3.8))
for r in claim_c_rows(study):                                     # colour = group size
    pts = [q for q in c_study["points"] if len(q["group"]) == r["size"]]
    xs, ys = [q["mv"] for q in pts], [q["normalized"] for q in pts]
    spread = [[q["normalized"] - min(s["normalized"] for s in q["per_seed"]) for q in pts],
              [max(s["normalized"] for s in q["per_seed"]) - q["normalized"] for q in pts]]
    label = (f"{r['size']} tasks (ρ = {r['spearman']:+.2f} [{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}], n = {r['n']})"
             if r["spearman"] is not None and r["ci"] and None not in r["ci"] else f"{r['size']} tasks (n = {r['n']})")
    if len(c_study["seeds"]) > 1:                                 # bars: the range over the seeds
        ax.errorbar(xs, ys, yerr=spread, fmt="o", ms=4, alpha=0.7, color=f"C{r['size'] - 2}", label=label)
    else:
        ax.scatter(xs, ys, s=16, alpha=0.7, color=f"C{r['size'] - 2}", label=label)
ax.set_xlabel("pairwise magnitude variance of the group"); ax.set_ylabel("merged normalized accuracy (TA)")
ax.set_title(f"REFERENCE study, profile {study['profile']}, seeds {c_study['seeds']}"); ax.legend(fontsize=7);

# %% [markdown]
# ## What came out
#
# The bullets below are generated from the study file, so they stay true when it is re-made. A note on
# claim (c): a correlation over groups cannot separate the magnitude variance from everything else that
# changes between groups (which tasks, how many, how well each task does alone). That is why the verdict
# comes from the fixed-effects slope, not from ρ. Notebook 05 changes the magnitudes directly
# (DO-Merging's decoupling) and measures what that does. Exercise 4 below does the same on a smaller
# scale: it makes one task louder and follows (3.5).

# %%
# NBVAL_CHECK_OUTPUT
from IPython.display import Markdown

Markdown(mv_verdict_sentences(study))

# %%
print(f"this run (profile {P.name}, {len(learned)} tasks both families learned): claim (b): {verdict_b}")
print(f"this run (profile {P.name}, {len(groups)} LoRA pairs): claim (c): {verdict_c}")

# %% [markdown]
# ## Exercises
#
# Each checker tests your function on fresh random float64 inputs: return float64 results and leave
# the inputs unchanged (no in-place operations). The solutions are in
# `solutions/03_solutions.ipynb`.
#
# 1. Write `my_column_magnitudes(delta)` for a `(d_out, d_in)` tensor. It returns $\alpha$ of (3.1),
#    one L2 norm per **input column**, shape `(d_in,)`.
# 2. Write `my_magnitude_variance(deltas)` for a list of $N$ tasks' `(d_out, d_in)` updates of one
#    layer. It returns (3.2) for that layer: the mean over columns of $\operatorname{std}_i / \operatorname{mean}_i$
#    of the column norms, with the population std. Leave out the columns that are zero in every task
#    (their mean is 0, so std/mean would be NaN); a column that is zero in only some tasks still counts.
# 3. Why a scale-free measure? Write `my_is_scale_free(measure)`. It takes a function `measure(deltas)`
#    (a list of `(d_out, d_in)` tensors → float) and returns `True` if the value does not change when
#    every task's update is multiplied by the same factor. The checker runs it on several candidate
#    measures (raw std, variance, CV, …). Afterwards, run your test on section 2's `raw_spread`,
#    `my_is_scale_free(lambda ds: raw_spread([{"layer": d} for d in ds]))`, and say why that measure
#    could not compare LoRA with full fine-tuning.
# 4. Predict, run, interpret (below the three cells).

# %%
from lorakit.course import exercises

def my_column_magnitudes(delta):
    raise NotImplementedError  # your code here

try:
    exercises.check_column_magnitudes(my_column_magnitudes)
except NotImplementedError:
    print("exercise 1 not attempted yet")

# %%
def my_magnitude_variance(deltas):
    raise NotImplementedError  # your code here

try:
    exercises.check_magnitude_variance(my_magnitude_variance)
except NotImplementedError:
    print("exercise 2 not attempted yet")

# %%
def my_is_scale_free(measure):
    raise NotImplementedError  # your code here

try:
    exercises.check_scale_free_test(my_is_scale_free)
except NotImplementedError:
    print("exercise 3 not attempted yet")


# %% [markdown]
# **4. Predict, run, interpret: one task made louder.** Take the first two tasks of section 3, a pair of
# real LoRA adapters, and multiply the first task's update by $c$ before merging, leaving the second
# alone. This changes nothing in the first task's directions, only its magnitudes ($\alpha_1 \to c\,\alpha_1$).
# *Before running the next cell*, predict how the pair's mean interference ratio $\bar R$ of (3.5)
# changes as $c$ goes from 1/4 to 4: set `prediction` to `"rises"`, `"falls"` or `"dips then rises"`.

# %%
prediction = None  # your prediction: "rises", "falls" or "dips then rises"

# %% [markdown]
# Run the measurement (given). For each $c$, it reports the pair's magnitude variance (3.2) and
# $\bar R$ from (3.4), both averaged over the adapted layers, and the merged pair's test accuracy per
# task. The merge is task arithmetic with the pair's λ from section 4, kept fixed for every $c$.

# %%
# NBVAL_CHECK_OUTPUT
pair = tasks[:2]
pair_mags = {n: torch.stack([column_magnitudes(lora[t].updates[n]) for t in pair]) for n in layer_names}
lam_pair = next(p["lam"] for p in points if p["group"] == list(pair))
print(f"pair: {pair[0]} (scaled by c) + {pair[1]}, λ = {lam_pair}")
print(f"{'c':>5} |     MV | mean R (3.5) | " + " | ".join(f"{t} acc" for t in pair))
for c in (0.25, 1.0, 4.0):
    scaled = [{n: LoRAUpdate(u.A, c * u.B, u.scaling) for n, u in lora[pair[0]].updates.items()}, lora[pair[1]].updates]
    mv_c = magnitude_variance(scaled)
    r_c = float(torch.stack([interference_from_magnitudes(torch.cat([c * m[:1], m[1:]])).mean()
                             for m in pair_mags.values()]).mean())
    acc = ev.score_tasks(merge_adapters(scaled, "task_arithmetic", lam=lam_pair), {t: lora[t] for t in pair}, "test")
    print(f"{c:5.2f} | {mv_c:.4f} |    {r_c:6.1f}      | " + " | ".join(f"{acc[t]:.3f}" for t in pair))

# %% [markdown]
# Interpret: write `my_mean_interference(mags)` for an `(N, d)` matrix of magnitudes (row $i$ = task $i$'s
# $\alpha_i$ for one layer). It returns $\bar R$ of (3.5) as a number: the mean over tasks $k$ and over
# the columns $j$ where every task is nonzero of $R_k[j] = \sum_{i \ne k} \alpha_i[j]^2 / \alpha_k[j]^2$.
# The checker tests it on random magnitudes. It then runs it on this pair at five values of $c$,
# compares your prediction with the measured curve and explains the curve (any prediction is
# accepted). Then look back at the accuracies above: which task pays when the pair is unequal?

# %%
def my_mean_interference(mags):
    raise NotImplementedError  # your code here

try:
    exercises.check_predict_louder_task(prediction, my_mean_interference, pair_mags)
except NotImplementedError:
    print("exercise 4 not attempted yet")

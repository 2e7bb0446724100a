# %% [markdown]
# # 05 — solutions
#
# Reference answers to the exercises of `05_do_merging`, checked by the same checkers.

# %%
import torch
from lorakit.course import exercises

# %% [markdown]
# **1.** One norm per input column (reduce over dim 0 of the *(d_out, d_in)* matrix), then divide each
# column by its norm, with a guard so that an all-zero column gets a zero direction instead of $0/0$.

# %%
# NBVAL_CHECK_OUTPUT
def my_decouple(delta, eps=1e-12):
    alpha = torch.linalg.vector_norm(delta, dim=0)                            # (d_in,)
    inv = torch.where(alpha > eps, 1.0 / torch.where(alpha > eps, alpha, 1.0), 0.0)
    return alpha, delta * inv[None, :]                                        # W̃ = ΔW diag(α)⁻¹

result = exercises.check_decouple_in(my_decouple)

# %% [markdown]
# **2.** The cross term of two tasks is the $r_i \times r_j$ matrix $A_i A_j^\top$; square its entries and
# sum, over pairs $i < j$ only.

# %%
# NBVAL_CHECK_OUTPUT
def my_cross_loss(As):
    return sum(((As[i] @ As[j].T) ** 2).sum() for i in range(len(As)) for j in range(i + 1, len(As)))

result = exercises.check_factor_cross_loss(my_cross_loss)

# %% [markdown]
# **3.** With $\hat A_i = A_i + \delta_i$, the gradient (5.5) is
# $2\sum_{j\ne i} (\hat A_i \hat A_j^\top)\hat A_j + 2\gamma\,\delta_i$; one step subtracts `lr` times it.

# %%
# NBVAL_CHECK_OUTPUT
def my_gd_step(As, deltas, gamma, lr):
    hats = [a + d for a, d in zip(As, deltas)]
    new = []
    for i, d in enumerate(deltas):
        grad = 2 * gamma * d
        for j, h in enumerate(hats):
            if j != i:
                grad = grad + 2 * (hats[i] @ h.T) @ h
        new.append(d - lr * grad)
    return new

result = exercises.check_ortho_gd_step(my_gd_step)

# %% [markdown]
# **4.** Per input column $j$, task arithmetic gives $\sum_i \alpha_{ij} w_{ij}$ and DO gives $\bar\alpha_j \sum_i w_{ij}$
# (unit $w_{ij}$). When the tasks' columns are nearly orthogonal (as in (5.1)), their squared norms are
# $\sum_i \alpha_{ij}^2$ and $N \bar\alpha_j^2$, so
#
# $$ \frac{\lVert \Delta W^*_\text{DO} \rVert_F}{\lVert \Delta W^*_\text{TA} \rVert_F} \approx
#    \sqrt{\frac{\sum_j N \bar\alpha_j^2}{\sum_j \sum_i \alpha_{ij}^2}} \le 1 \tag{5.7}$$
#
# (mean ≤ root mean square, column by column): the decoupled merge is *smaller* whenever the magnitudes
# differ. The ratio itself, from scratch, reusing exercise 1's guarded decoupling:

# %%
# NBVAL_CHECK_OUTPUT
prediction = "smaller"

def my_norm_ratio(updates):
    deltas = [u.delta().double() for u in updates]
    parts = [my_decouple(d) for d in deltas]                              # (α_i, W̃_i), axis "in"
    alpha_star = torch.stack([a for a, _ in parts]).mean(dim=0)           # mean magnitude per column
    do = alpha_star[None, :] * sum(w for _, w in parts)                   # (5.2)
    return float(do.norm() / sum(deltas).norm())

result = exercises.check_predict_do_magnitude(prediction, my_norm_ratio)

# %% [markdown]
# # 04 — solutions
#
# Reference answers to the exercises of `04_osrm`, checked by the same checkers.

# %%
import torch
from lorakit.course import exercises

# %% [markdown]
# **1. OSRM's $A$.** By (4.3)–(4.4): the eigenvectors of the uncentered Gram $H^\top H$ for its $r$
# smallest eigenvalues, as rows. `torch.linalg.eigh` sorts eigenvalues in ascending order, so they are the
# *first* $r$ columns. (An SVD of $H$ works too, with `full_matrices=True` so that the null space is
# included when $k < d_\text{in}$, taking the *last* $r$ rows of $V^\top$.)

# %%
# NBVAL_CHECK_OUTPUT
def my_osrm_A(H_other, r):
    H = H_other.double()
    G = H.T @ H                              # uncentered: no mean subtracted
    _, V = torch.linalg.eigh(G)              # ascending eigenvalues, eigenvectors as columns
    return V[:, :r].T                        # (r, d_in), orthonormal rows

_ = exercises.check_osrm_subspace(my_osrm_A)

# %% [markdown]
# **2. The interference ratio (4.5).** Both updates act on the same features $H_j$ (rows = inputs,
# so $\Delta W H_j^\top$ has one column per input); the ratio of the Frobenius norms.

# %%
# NBVAL_CHECK_OUTPUT
def my_interference_ratio(dW_t, dW_j, H_j):
    H = H_j.double()
    return float(torch.linalg.matrix_norm(dW_t.double() @ H.T) / torch.linalg.matrix_norm(dW_j.double() @ H.T))

_ = exercises.check_interference_ratio(my_interference_ratio)

# %% [markdown]
# **3. The centring trap.** Rows that vary least along one direction $v$, plus a large mean along $v$.
# The centred covariance has its smallest eigenvalue at $v$ (the mean is subtracted away), so its
# subspace contains $v$ and $A\mu \ne 0$; the uncentered Gram carries $k\,\mu\mu^\top$ and avoids $v$.

# %%
# NBVAL_CHECK_OUTPUT
def my_trap(k, d, r):
    g = torch.Generator().manual_seed(0)
    stds = torch.logspace(-1, 1, d, dtype=torch.float64)     # direction 0 varies least
    H = torch.randn(k, d, generator=g, dtype=torch.float64) * stds
    H[:, 0] += 10.0                                          # a large mean on that direction
    return H

_ = exercises.check_centring_trap(my_trap)

# %% [markdown]
# **4.** By Ky Fan (section 3), OSRM's $A$ gives $\lVert A H^\top\rVert_F^2 = \lambda_1 + \dots + \lambda_r$, the $r$
# smallest eigenvalues of $H^\top H$, and $\lVert A\rVert_F^2 = r$, $\lVert H\rVert_F^2 = \operatorname{tr} H^\top H$. So
# $e = \frac{d}{r}\,\frac{\lambda_1 + \dots + \lambda_r}{\lambda_1 + \dots + \lambda_d}$: the mean of the $r$ smallest
# eigenvalues over the mean of all of them. It rises with $r$ (each added eigenvalue is at least as large
# as those already in), up to 1 at $r = d$. The checker needs real features of "the other tasks"; any
# features do for the formula, so here they are random ones with a mean, like a transformer's.

# %%
# NBVAL_CHECK_OUTPUT
prediction = "rises"

def my_overlap(H, r):
    lam = torch.linalg.eigvalsh(H.double().T @ H.double())       # ascending
    return float(lam[:r].sum() / lam.sum() * H.shape[1] / r)

from lorakit.course.exercises.nb04 import graded_features
H_other = graded_features(1000, 96, seed=3) + 2.0
_ = exercises.check_predict_osrm_rank(prediction, my_overlap, H_other, (2, 8, 32))

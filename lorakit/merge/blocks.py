r"""Entrywise building blocks on stacked task tensors τ of shape ``(N, ...)`` (peft semantics).

TIES is trim → elect sign → disjoint mean; DARE is drop-and-rescale, then a sum or TIES' last two
steps. Each block is a pure function; :func:`stack_deltas` forms the dense ``ΔW_i = s_i B_i A_i``
of one layer (``(N, d_out, d_in)``) from its LoRA factors.

The fast paths (:mod:`.ties`, :mod:`.dare`) never hold the N dense updates at once: they walk a
:class:`TaskBlocks` source one **block** at a time, a flat span ``[start, stop)`` of every task,
``(N, stop - start)``. :class:`FactorBlocks` recomputes a block of rows of every
``ΔW_i = s_i B_i[rows] A_i`` from the factors (r ≪ d: cheap, and bit-identical to
:meth:`~lorakit.lora.peft.LoRAUpdate.delta` for blocks of ≥ :data:`MIN_ROWS` rows on CPU);
:class:`DenseBlocks` takes views of a ready stack.

Block size (:data:`BLOCK_ENTRIES`): a block holds ``N × c ≈ 2^20`` entries, 4 MiB per float32
temporary. The fused kernels make a handful of such temporaries, so one block's working set
(≈ 16–24 MiB) stays in the last-level cache (32 MiB here) while every op runs on torch's thread
pool (``torch.get_num_threads()``, set by the caller); larger blocks spill to DRAM, smaller ones
pay per-op overhead (~10 µs × ~10 ops per block).
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np
import torch

from ..lora.update import LoRAUpdate

#: Entries (all N tasks together) in one block of the chunked kernels; see the module docstring.
BLOCK_ENTRIES = 1 << 20
#: Fewest rows in a block of :class:`FactorBlocks`: BLAS takes another path for very short
#: products, whose results can differ from the full ``B @ A`` in the last bit.
MIN_ROWS = 16


def trim_topk(tau: torch.Tensor, density: float) -> torch.Tensor:
    r"""TIES step 1: keep the ``k = int(density · numel)`` entries of largest :math:`|\tau|`.

    .. math:: \hat\tau = \tau \odot m, \quad m_e = [\,|\tau_e| \text{ is among the top } k\,]

    Same rule as peft's ``prune(..., method="magnitude")``: ``density >= 1`` keeps everything,
    and ``k`` is rounded down. One task tensor of any shape; returns the same shape. (The
    reference rule: :func:`lorakit.merge.ties.ties_dense` gets the same result without a top-k.)
    """
    if density >= 1:
        return tau
    k = int(density * tau.numel())
    flat = tau.reshape(-1)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        keep[torch.topk(flat.abs(), k=k, largest=True).indices] = True
    return torch.where(keep, flat, torch.zeros_like(flat)).reshape(tau.shape)


def elect_sign(stack: torch.Tensor) -> torch.Tensor:
    r"""TIES step 2: per entry, which tasks agree with the elected sign.

    .. math:: \sigma_e = \operatorname{sign}\Big(\sum_i \hat\tau_{i,e}\Big)\ (\text{ties} \to +1),
        \qquad \text{agree}_{i,e} = [\operatorname{sign}\hat\tau_{i,e} = \sigma_e]

    ``stack``: ``(N, ...)``; returns a bool mask of the same shape (zeros never agree).
    Same rule as peft's ``calculate_majority_sign_mask(..., method="total")``.
    """
    total = stack.sum(dim=0)
    elected = torch.where(total >= 0, 1.0, -1.0).to(stack.dtype)
    return stack.sign() == elected


def disjoint_mean(stack: torch.Tensor, agree: torch.Tensor) -> torch.Tensor:
    r"""TIES step 3: mean over the agreeing tasks only.

    .. math:: \tau^*_e = \frac{\sum_i \text{agree}_{i,e}\,\hat\tau_{i,e}}{\max(1, \sum_i \text{agree}_{i,e})}

    ``stack``, ``agree``: ``(N, ...)``; returns ``(...)``. Entries with no agreeing task are 0.
    """
    kept = torch.where(agree, stack, torch.zeros_like(stack)).sum(dim=0)
    count = agree.sum(dim=0).clamp(min=1).to(stack.dtype)
    return kept / count


def elect_disjoint_mean_(block: torch.Tensor) -> torch.Tensor:
    r"""TIES steps 2 and 3 fused on one block ``(N, c)``, which it overwrites; returns ``(c,)``.

    With :math:`\sigma_e` the elected sign, the tasks that agree are those with
    :math:`\sigma_e\hat\tau_{i,e} > 0`, so

    .. math:: \tau^*_e = \sigma_e \frac{\sum_i \max(\sigma_e\hat\tau_{i,e}, 0)}
        {\max\big(1, \sum_i \operatorname{sign}\max(\sigma_e\hat\tau_{i,e}, 0)\big)}

    — bit for bit ``disjoint_mean(block, elect_sign(block))`` where ``sum(0)`` adds in order (see
    :func:`task_sum`; multiplying by ±1 and taking
    ``max(·, 0)`` are exact, and the sums run over the same values in the same order), with float
    ops only (bool tensors take slow unvectorised paths on CPU): ``σ = sign(sign(Σ) + ½)`` maps a
    zero sum to +1.
    """
    elected = task_sum(block).sign_().add_(0.5).sign_()
    block.mul_(elected).clamp_(min=0)
    count = block.sign().sum(dim=0).clamp_(min=1)  # a sum of 0s and 1s: exact in any order
    return task_sum(block).mul_(elected).div_(count)


def task_sum(block: torch.Tensor) -> torch.Tensor:
    r""":math:`\sum_i` over the first dim as ``((x_0 + x_1) + x_2) + …``, the same for any block shape.

    ``block.sum(dim=0)`` adds in this order on its vectorised main loop, but in another order on a
    row's unaligned tail, so its last bits would depend on where the blocks are cut.
    """
    total = block[0].clone()
    for row in block[1:]:
        total.add_(row)
    return total


def dare_drop(tau: torch.Tensor, drop_rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""DARE: drop each entry with probability p and rescale the survivors.

    .. math:: \tilde\tau = \frac{m \odot \tau}{1 - p}, \qquad m_e \sim \text{Bernoulli}(1 - p)

    Draws the mask exactly as peft's ``prune(..., method="random", rescale=True)`` with
    ``density = 1 - p`` does, so the same generator state gives the same mask (on CPU through
    :func:`bernoulli_keep`, several times faster). ``p = 0`` returns ``tau`` unchanged and draws
    nothing.
    """
    if drop_rate == 0:
        return tau
    keep = 1.0 - drop_rate
    if tau.device.type == "cpu" and tau.dtype in (torch.float32, torch.float64):
        mask = bernoulli_keep(generator or torch.default_generator, 1, tau.numel(), keep, tau.dtype)
        return tau * mask.reshape(tau.shape) / keep
    mask = torch.bernoulli(torch.full_like(tau, keep), generator=generator)
    return tau * mask / keep


# ----------------------------------------------------------------------------------------------
# torch.bernoulli's CPU masks, drawn from the same Mersenne Twister stream by numpy
# ----------------------------------------------------------------------------------------------

_MT_N = 624  # words of MT19937 state
_STATE_LEFT, _STATE_NEXT, _STATE_WORDS = 8, 16, 24  # byte offsets in a CPU generator's state


def bernoulli_keep(
    generator: torch.Generator, n_tasks: int, numel: int, keep: float, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    r"""``torch.bernoulli(torch.full((numel,), keep, dtype=dtype), generator=g)`` for N tasks in order.

    Returns a bool ``(n_tasks, numel)`` mask; row ``i`` equals the mask torch would draw for task
    ``i`` after tasks ``0 … i-1``, and ``generator`` is left in the state torch would leave it in.

    torch's CPU kernel for a tensor ``p`` is a serial loop over the 32-bit outputs :math:`u_j` of
    its MT19937 engine: float32 keeps entry ``j`` iff :math:`(u_j \bmod 2^{24})\,2^{-24} < p`;
    float64 uses two outputs, :math:`((u_{2j} 2^{32} + u_{2j+1}) \bmod 2^{53})\,2^{-53} < p`.
    numpy's ``MT19937`` is the same engine; loaded with the generator's state its
    ``random_raw`` yields the same words ~5× faster, still serial (one core: the stream is
    sequential, and skipping ahead in MT19937 costs more than drawing).
    """
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"bernoulli_keep: float32 or float64, not {dtype}")
    state = generator.get_state().numpy().copy()
    raw = state.tobytes()
    left = int(np.frombuffer(raw, np.int32, 1, _STATE_LEFT)[0])
    pos = int(np.frombuffer(raw, np.uint64, 1, _STATE_NEXT)[0])
    engine = np.random.MT19937(0)
    key = np.frombuffer(raw, np.uint64, _MT_N, _STATE_WORDS).astype(np.uint32)
    engine.state = {"bit_generator": "MT19937", "state": {"key": key, "pos": _MT_N if left == 1 else pos}}
    digits = 24 if dtype == torch.float32 else 53
    p = float(np.float32(keep)) if dtype == torch.float32 else float(keep)
    below = np.uint64(np.ceil(p * 2.0**digits))  # u·2^-d < p  ⟺  u < ⌈p·2^d⌉ for an integer u
    low_bits = np.uint64(2**digits - 1)
    masks = torch.empty(n_tasks, numel, dtype=torch.bool)
    out = masks.numpy()
    step = 1 << 16
    for i in range(n_tasks):
        for start in range(0, numel, step):
            count = min(step, numel - start)
            if digits == 24:
                words = engine.random_raw(count)
            else:
                pairs = engine.random_raw(2 * count).reshape(count, 2)
                words = (pairs[:, 0] << np.uint64(32)) | pairs[:, 1]
            np.less(np.bitwise_and(words, low_bits, out=words), below, out=out[i, start : start + count])
    after = engine.state["state"]
    view = state.view(np.uint8)
    view[_STATE_LEFT : _STATE_LEFT + 4] = np.frombuffer(np.int32(_MT_N + 1 - after["pos"]).tobytes(), np.uint8)
    view[_STATE_NEXT : _STATE_NEXT + 8] = np.frombuffer(np.uint64(after["pos"]).tobytes(), np.uint8)
    words_at = slice(_STATE_WORDS, _STATE_WORDS + 8 * _MT_N)
    view[words_at] = np.frombuffer(after["key"].astype(np.uint64).tobytes(), np.uint8)
    generator.set_state(torch.from_numpy(view))
    return masks


# ----------------------------------------------------------------------------------------------
# Task tensors a block at a time
# ----------------------------------------------------------------------------------------------


class TaskBlocks(Protocol):
    """N task tensors of ``numel`` entries each, seen one flat span ``[start, stop)`` at a time."""

    n_tasks: int
    numel: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    fresh: bool  # whether :meth:`block` returns a new tensor the caller may overwrite

    def spans(self, entries: int | None = None) -> list[tuple[int, int]]: ...

    def block(self, start: int, stop: int) -> torch.Tensor: ...

    def sample(self, index: torch.Tensor) -> torch.Tensor: ...

    def task(self, i: int) -> torch.Tensor: ...


def flat_spans(numel: int, step: int) -> list[tuple[int, int]]:
    """``[0, numel)`` cut into spans of ``step`` entries (the last one shorter)."""
    step = max(1, step)
    return [(start, min(start + step, numel)) for start in range(0, numel, step)]


def row_spans(rows: int, cols: int, n_tasks: int, entries: int) -> list[tuple[int, int]]:
    """Flat spans of whole rows, about ``entries / n_tasks`` entries each and ≥ :data:`MIN_ROWS` rows
    (a short tail joins the block before it); one span if the whole ``(rows, cols)`` fits."""
    if rows * cols * n_tasks <= entries:
        return [(0, rows * cols)]
    step = max(MIN_ROWS, entries // (n_tasks * cols))
    starts = list(range(0, rows, step))
    if len(starts) > 1 and rows - starts[-1] < MIN_ROWS:
        starts.pop()
    ends = starts[1:] + [rows]
    return [(a * cols, b * cols) for a, b in zip(starts, ends)]


class DenseBlocks:
    """A ready dense stack ``(N, ...)``: blocks are views of it (read-only to the kernels)."""

    fresh = False

    def __init__(self, stack: torch.Tensor) -> None:
        self.flat = stack.reshape(stack.shape[0], -1)
        self.n_tasks, self.numel = self.flat.shape
        self.shape = tuple(stack.shape[1:])
        self.dtype, self.device = stack.dtype, stack.device

    def spans(self, entries: int | None = None) -> list[tuple[int, int]]:
        return flat_spans(self.numel, (entries or BLOCK_ENTRIES) // max(1, self.n_tasks))

    def block(self, start: int, stop: int) -> torch.Tensor:
        return self.flat[:, start:stop]

    def sample(self, index: torch.Tensor) -> torch.Tensor:
        return self.flat[:, index]

    def task(self, i: int) -> torch.Tensor:
        return self.flat[i]


class FactorBlocks:
    r"""N LoRA updates of one layer; a block is rows ``[a, b)`` of every :math:`\Delta W_i = s_i B_i A_i`.

    Recomputed on demand as ``s_i · (B_i[a:b] @ A_i)`` (r multiply-adds per entry), the same
    expression as :meth:`~lorakit.lora.peft.LoRAUpdate.delta`, so the N dense updates never exist at once.
    """

    fresh = True

    def __init__(self, updates: Sequence[LoRAUpdate], dtype: torch.dtype | None = None) -> None:
        self.dtype = dtype or compute_dtype(updates)
        self.A = [u.A.to(self.dtype) for u in updates]
        self.B = [u.B.to(self.dtype) for u in updates]
        self.scaling = [u.scaling for u in updates]
        self.n_tasks = len(updates)
        self.shape = (self.B[0].shape[0], self.A[0].shape[1])
        self.numel = self.shape[0] * self.shape[1]
        self.device = self.A[0].device

    def spans(self, entries: int | None = None) -> list[tuple[int, int]]:
        return row_spans(*self.shape, self.n_tasks, entries or BLOCK_ENTRIES)

    def block(self, start: int, stop: int) -> torch.Tensor:
        cols = self.shape[1]
        a, b = start // cols, stop // cols
        out = torch.empty(self.n_tasks, b - a, cols, dtype=self.dtype, device=self.device)
        for i, (A, B, s) in enumerate(zip(self.A, self.B, self.scaling)):
            torch.matmul(B[a:b], A, out=out[i]).mul_(s)
        return out.view(self.n_tasks, -1)

    def sample(self, index: torch.Tensor) -> torch.Tensor:
        rows, cols = index // self.shape[1], index % self.shape[1]
        return torch.stack([s * (B[rows] * A[:, cols].T).sum(1) for A, B, s in zip(self.A, self.B, self.scaling)])

    def task(self, i: int) -> torch.Tensor:
        return (self.scaling[i] * (self.B[i] @ self.A[i])).reshape(-1)


def compute_dtype(updates: Sequence[LoRAUpdate]) -> torch.dtype:
    """float64 if any factor is float64 (DO-Merging hands its base method float64 factors), else float32."""
    if any(u.A.dtype == torch.float64 or u.B.dtype == torch.float64 for u in updates):
        return torch.float64
    return torch.float32


def stack_deltas(updates: Sequence[LoRAUpdate], dtype: torch.dtype | None = None) -> torch.Tensor:
    """The dense task updates stacked: ``(N, d_out, d_in)``, ``ΔW_i = s_i B_i A_i``."""
    dtype = dtype or compute_dtype(updates)
    return torch.stack([u.delta(dtype) for u in updates])

r"""The packed fast path of :class:`lorakit.eval.encoder.Evaluator`: BERT sequence classifiers on the CPU without padding.

:class:`PackedBert` computes what ``model(**batch).logits`` computes for a
``BertForSequenceClassification`` (MiniLM), minus work that does not change a prediction: no
padding (attention per group of equal-length texts), the embedding output cached per evaluation
set, the last layer on the CLS rows only, and oneDNN's GEMM with fused GELU / residual add where it
runs and agrees with ``F.linear`` (:func:`onednn_linear_works`), else ``F.linear``. The encoder
layers compute in float32 or, with ``eval_dtype`` ``bfloat16`` / ``auto`` on a CPU with native bf16
(AMX), in bfloat16 (:func:`resolve_eval_dtype`): about 2× faster, a few predictions in a thousand flip.
Logits agree with HF's padded forward to float rounding; ``tests/test_train_eval.py`` checks
1e-5 and identical predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F



def onednn_linear_works() -> bool:
    """Whether ``torch.ops.mkldnn._linear_pointwise`` (oneDNN's fp32 GEMM, optional fused GELU)
    runs here and agrees with ``F.linear`` (and ``F.gelu``) on a small check."""
    global _ONEDNN
    if _ONEDNN is None:
        try:
            gen = torch.Generator().manual_seed(0)
            x, w, b = (torch.randn(s, generator=gen) for s in ((5, 8), (3, 8), (3,)))
            y = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
            g = torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu", [], "none")
            ref = F.linear(x, w, b)
            s = torch.ops.mkldnn._linear_pointwise.binary(x, ref, w, b, "add")
            _ONEDNN = bool(torch.allclose(y, ref, atol=1e-5) and torch.allclose(g, F.gelu(ref), atol=1e-5)
                           and torch.allclose(s, 2 * ref, atol=1e-5))
        except (AttributeError, RuntimeError, NotImplementedError):
            _ONEDNN = False
    return _ONEDNN


_ONEDNN: bool | None = None
_ONEDNN_DTYPES = (torch.float32, torch.bfloat16)

def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """``F.linear`` (then the exact, erf GELU if ``gelu``), through oneDNN on the CPU when it works:
    on this project's AMD CPUs MKL's fp32 GEMM (what ``F.linear`` calls) runs at about half of
    oneDNN's speed, and ATen's GELU costs a sixth of a BERT forward that oneDNN fuses for free."""
    if _ONEDNN and x.device.type == "cpu" and x.dtype in _ONEDNN_DTYPES:
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu" if gelu else "none", [], "none" if gelu else "")
    y = F.linear(x, w, b)
    return F.gelu(y) if gelu else y


def _linear_add(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, w, b) + residual``, the add fused into oneDNN's GEMM where it works (same bits)."""
    if _ONEDNN and x.device.type == "cpu" and x.dtype in _ONEDNN_DTYPES:
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, w, b, "add")
    return F.linear(x, w, b) + residual


@dataclass
class PackedSet:
    """One evaluation set without padding: every real token of every text, text after text.

    ``embeddings`` is ``(tokens, hidden)`` — the BERT embedding layer's output (word + position +
    token type, LayerNorm), which no ΔW changes, so it is computed once per set; ``lengths`` are the
    texts' token counts (non-decreasing: the set is length-sorted); ``offsets[i]`` is text ``i``'s
    first row (its CLS token), ``offsets[-1]`` the number of rows.
    """

    embeddings: torch.Tensor
    lengths: list[int]
    offsets: list[int]
    version: tuple[int, ...] = ()  # the embedding parameters' in-place version counters it was made with


class PackedBert:
    """Inference of a ``BertForSequenceClassification`` on packed sets, numerically the same model.

    What ``model(**batch).logits`` computes, minus the work that does not change a prediction:

    * no padding: the Linear layers, LayerNorms and GELUs (nearly all the FLOPs) run on the real
      tokens only, and attention runs per group of texts of one length, with no mask (a masked
      position contributes an exact 0 to HF's softmax, so nothing is lost);
    * the last layer runs its query, attention output and feed-forward on the CLS rows only (the
      pooler reads nothing else), and its keys and values are never projected
      (:meth:`_attend_cls`): that layer costs a text what the others cost a token;
    * the embedding output is cached per set (:class:`PackedSet`);
    * weights come from a dict (``W_0`` or ``W_0 + ΔW``), so the model itself is never modified.

    Logits agree with HF's padded forward to float rounding (oneDNN's GEMM sums in another order
    than MKL's; ``tests/test_train_eval.py`` checks 1e-5 and equal predictions).
    """

    def __init__(self, model) -> None:
        self.model = model
        bert = model.bert
        self.layers = list(bert.encoder.layer)
        att = self.layers[0].attention.self
        self.heads, self.head_dim = att.num_attention_heads, att.attention_head_size
        self.scaling = att.scaling
        self.prefix = "bert.encoder.layer"
        self.linear_names = {name for name, m in model.named_modules()
                             if isinstance(m, torch.nn.Linear) and name != "classifier"}

    @staticmethod
    def supports(model, device: str) -> bool:
        """A plain BERT encoder classifier in float32 on the CPU (else the generic padded path)."""
        try:
            from transformers import BertForSequenceClassification
            from transformers.activations import GELUActivation
        except ImportError:  # pragma: no cover
            return False
        if type(model) is not BertForSequenceClassification or str(device) != "cpu":
            return False
        c = model.config
        if (c.is_decoder or getattr(c, "add_cross_attention", False) or c.hidden_act != "gelu"
                or getattr(c, "position_embedding_type", "absolute") != "absolute"
                or getattr(c, "chunk_size_feed_forward", 0) or model.bert.pooler is None):
            return False
        if any(p.dtype != torch.float32 for p in model.parameters()):
            return False
        return all(type(layer.intermediate.intermediate_act_fn) is GELUActivation for layer in model.bert.encoder.layer)

    def pack(self, encodings: Mapping[str, torch.Tensor], batch_size: int) -> PackedSet | None:
        """The set's embedding output without padding (``None`` if the padding is not on the right)."""
        mask = encodings["attention_mask"].bool()
        lengths = mask.sum(1)
        if len(lengths) and not torch.equal(mask, torch.arange(mask.shape[1]) < lengths[:, None]):
            return None
        if len(lengths) and int(lengths.min()) == 0:
            return None
        parts = []
        emb = self.model.bert.embeddings
        for i in range(0, len(lengths), batch_size):
            width = int(lengths[i : i + batch_size].max())
            batch = {k: v[i : i + batch_size, :width] for k, v in encodings.items() if k in ("input_ids", "token_type_ids")}
            out = emb(input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids"))
            parts.append(out[mask[i : i + batch_size, :width]])
        hidden = self.model.config.hidden_size
        embeddings = torch.cat(parts) if parts else torch.empty(0, hidden)
        lengths = [int(n) for n in lengths]
        offsets = [0]
        for n in lengths:
            offsets.append(offsets[-1] + n)
        return PackedSet(embeddings, lengths, offsets, self.embedding_version())

    def embedding_version(self) -> tuple[int, ...]:
        """In-place version counters of the embedding parameters (a cached output is stale once they move)."""
        return tuple(p._version for p in self.model.bert.embeddings.parameters())

    def _groups(self, lengths: list[int]):
        """``(first row, texts, length)`` per run of equal lengths (the set is length-sorted)."""
        i = row = 0
        while i < len(lengths):
            j = i
            while j < len(lengths) and lengths[j] == lengths[i]:
                j += 1
            yield row, i, j - i, lengths[i]
            row, i = row + (j - i) * lengths[i], j

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """Self-attention of packed rows, one SDPA call per run of equal lengths (no padding, no mask)."""
        h, dh = self.heads, self.head_dim
        out = q.new_empty(q.shape)
        for row, _, n, length in self._groups(lengths):
            qg, kg, vg = (t[row : row + n * length].view(n, length, h, dh).transpose(1, 2) for t in (q, k, v))
            ctx = F.scaled_dot_product_attention(qg, kg, vg, scale=self.scaling)
            out[row : row + n * length] = ctx.transpose(1, 2).reshape(n * length, h * dh)
        return out

    def _attend_cls(self, q: torch.Tensor, x: torch.Tensor, L: dict, lengths: list[int]) -> torch.Tensor:
        r"""The last layer's attention for the CLS queries ``q`` (one row per text) over all rows ``x``,
        without projecting the keys and values of every token.

        Per head :math:`h`: :math:`q_h\cdot k_{hj} = (q_h W_{k,h})\cdot x_j + q_h\cdot b_{k,h}`, and the
        last term is the same for every key, so softmax drops it; :math:`\sum_j p_{hj} v_{hj} =
        (\sum_j p_{hj} x_j) W_{v,h}^\top + b_{v,h}` since the weights sum to 1. That is ``2 d²`` less
        per token for ``O(heads·d)`` per token (float rounding apart, the same numbers).
        """
        h, dh, d = self.heads, self.head_dim, x.shape[1]
        qk = torch.bmm(q.view(-1, h, dh).transpose(0, 1), L["w_k"].view(h, dh, d)).transpose(0, 1) * self.scaling
        z = q.new_empty(q.shape[0], h, d)
        for row, first, n, length in self._groups(lengths):
            xg = x[row : row + n * length].view(n, length, d)
            p = torch.softmax(torch.bmm(qk[first : first + n], xg.transpose(1, 2)), dim=-1)  # (n, h, length)
            z[first : first + n] = torch.bmm(p, xg)
        ctx = torch.bmm(z.transpose(0, 1), L["w_v"].view(h, dh, d).transpose(1, 2)).transpose(0, 1)  # (texts, h, dh)
        return (ctx + L["b_v"].view(h, dh)).reshape(-1, h * dh)

    def prepare(self, weights: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float32,
                deltas: Mapping[str, torch.Tensor] | None = None) -> list[dict]:
        """Per layer, the tensors :meth:`logits` needs, from ``weights`` (by module name; ``W_0`` or
        ``W_0 + ΔW``), ``deltas`` (``{module: ΔW}`` still to add) and the model's biases and LayerNorms:
        once per score, not per chunk.

        ``dtype``: the compute dtype of every layer but the last. Each ``W_0 + ΔW`` is formed in float32
        (what ``add_`` gives, bit for bit), then cast. Rounding the sum costs no more than rounding
        ``W_0`` alone (both errors are about 2⁻⁹ |W|; keeping ΔW apart in its own GEMM was measured no
        closer to float32, tests/test_train_eval.py). The last layer (CLS rows only: cheap) stays float32.
        """
        deltas = dict(deltas or {})
        layers = []
        for li, layer in enumerate(self.layers):
            p = f"{self.prefix}.{li}."
            last = li == len(self.layers) - 1
            dt = torch.float32 if last else dtype
            def cast(t: torch.Tensor, dt: torch.dtype = dt) -> torch.Tensor:
                return t if t.dtype == dt else t.to(dt)

            def weight(name: str) -> torch.Tensor:
                w, dw = weights[p + name], deltas.get(p + name)
                return cast(w if dw is None else w + dw.to(w.dtype).to(w.device))

            def norm(ln: torch.nn.LayerNorm) -> tuple:
                return ln.normalized_shape, cast(ln.weight), cast(ln.bias), ln.eps

            att, so, out = layer.attention.self, layer.attention.output, layer.output
            names = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
                     "o": "attention.output.dense", "i": "intermediate.dense", "out": "output.dense"}
            w = [weight(names[s]) for s in ("q", "k", "v")]
            b = [cast(getattr(att, s).bias) for s in ("query", "key", "value")]
            layers.append({
                "last": last, "dtype": dt,
                # one GEMM for q, k, v (for k, v only in the last layer, whose q is the CLS rows')
                "w_in": None if last else torch.cat(w), "b_in": None if last else torch.cat(b),
                "w_q": w[0], "b_q": b[0], "w_k": w[1], "w_v": w[2], "b_v": b[2],
                "w_o": weight(names["o"]), "b_o": cast(so.dense.bias), "ln1": norm(so.LayerNorm),
                "w_i": weight(names["i"]), "b_i": cast(layer.intermediate.dense.bias),
                "w_out": weight(names["out"]), "b_out": cast(out.dense.bias), "ln2": norm(out.LayerNorm),
            })
        return layers

    def logits(self, x: torch.Tensor, lengths: list[int], layers: list[dict], pooler: torch.Tensor,
               head: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
        """Logits for packed embedding rows ``x`` of texts with ``lengths`` (``layers`` from :meth:`prepare`,
        ``pooler`` the pooler's weight, ``head`` the classifier's weight and bias)."""
        d = x.shape[1]
        cls = torch.tensor([0] + lengths[:-1]).cumsum(0)
        for L in layers:
            x = x.to(L["dtype"])
            if L["last"]:
                q = _linear(x[cls], L["w_q"], L["b_q"])
                ctx = self._attend_cls(q, x, L, lengths)
                x = x[cls]  # the CLS rows: all the pooler reads
            else:
                qkv = _linear(x, L["w_in"], L["b_in"])
                ctx = self._attend(qkv[:, :d], qkv[:, d : 2 * d], qkv[:, 2 * d :], lengths)
            a = F.layer_norm(_linear_add(ctx, L["w_o"], L["b_o"], x), *L["ln1"])
            i = _linear(a, L["w_i"], L["b_i"], gelu=True)
            x = F.layer_norm(_linear_add(i, L["w_out"], L["b_out"], a), *L["ln2"])
        # the pooler and the head in float32 (one row per text: nothing to gain, the logits keep their bits)
        pooled = torch.tanh(_linear(x.float(), pooler, self.model.bert.pooler.dense.bias))
        return F.linear(pooled, *head)

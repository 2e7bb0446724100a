r"""Score merged causal LMs: greedy generation of every task's prompts, exact match, no heads.

The merged model is :math:`W_0 + \Delta W^*` on the adapted Linear layers and nothing else: a causal
LM keeps no per-task head, so one model answers every task. For task :math:`t` and
split :math:`S`,

.. math:: \text{EM}_t = \frac{1}{|S|}\sum_{(x, y) \in S} [\,\text{greedy}(W_0 + \Delta W^*, p(x)) = y\,]

(:func:`exact_match`, the accuracy every table reports), and the same with
:func:`normalized_match` as a second metric of the chosen merge. Decoding is greedy and batched, prompts
**left**-padded so that every row's next token is at the same position, with the KV cache of
``model.generate`` (:func:`greedy_generate`); :func:`exact_match` is whitespace-stripped equality and
:func:`normalized_match` also case-folds, collapses inner whitespace and drops surrounding punctuation.
:class:`CausalEvaluator` has the encoder :class:`lorakit.eval.encoder.Evaluator`'s interface
(``correct``, ``correct_tasks``, ``score_tasks``, ``individual``), so
:func:`lorakit.run.search.select_and_report` chooses λ on validation exactly as on the encoder track.
"""

from __future__ import annotations

import hashlib
import re
import string
import time
from typing import Callable, Mapping, Sequence

import torch

from ..data.models import load_base, load_tokenizer, quiet
from ..data.generative import encode_prompts, eos_token_id, pad_token_id, token_ids
from ..errors import LorakitError
from .scorer import TaskScorer
from ..data.generative import GenerativeTaskData
from ..osrm import find_linear_modules
from ..profiles import Profile, get_profile, resolve_eval_dtype

SPLITS = ("val", "test")
#: cap of the new tokens generated per prompt (the longest target of the task + eos decides below it)
MAX_NEW_TOKENS = 32


def delta_fingerprint(deltas: Mapping[str, torch.Tensor]) -> str:
    """A short hash of ``{module: ΔW}`` from each tensor's shape, sum, sum of squares and a strided sample.

    Cheap (a few reductions, no copy of the tensors) and different for any two merges that differ
    in practice; the evaluator keys its predictions by it, so scoring one ΔW twice generates once.
    """
    h = hashlib.sha256()
    for name in sorted(deltas):
        d = deltas[name].detach()
        flat = d.reshape(-1).double()
        h.update(f"{name}{tuple(d.shape)}{float(flat.sum())!r}{float((flat * flat).sum())!r}"
                 f"{float(flat[::997].sum())!r}".encode())
    return h.hexdigest()[:20]


class CausalEvaluator(TaskScorer):
    """One causal base model and the val/test prompts of the generative tasks; scores any ΔW by exact match.

    ``W_0 + ΔW`` is written into the model's weights (computed in float32 from a float32 copy of
    ``W_0``, then cast to the model's dtype), every task generated with it, and ``W_0`` restored
    from the copy, also when an error is raised midway. Predictions are kept per
    ``(task, split, ΔW)`` (:func:`delta_fingerprint`), so the test split of the chosen point, the
    individual adapters and the floor are generated once. ``seconds`` / ``prompts`` / ``new_tokens``
    count the generation work for the run's throughput.
    """

    def __init__(self, tasks: Sequence[GenerativeTaskData], profile: str | Profile | None = None, model=None,
                 tokenizer=None) -> None:
        quiet()
        self.profile = get_profile(profile)
        self.data = {d.name: d for d in tasks}
        self.device = self.profile.device
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(self.profile.model)
        self.model = (model if model is not None else load_base(self.profile.model, device=self.device)).eval()
        self._modules = dict(self.model.named_modules())
        self._originals: dict[str, torch.Tensor] = {}
        #: the dtype the merged model generates in (the profile's ``eval_dtype``; ``W_0 + ΔW`` is summed in float32)
        self.eval_dtype = resolve_eval_dtype(self.profile.eval_dtype, self.device)
        if self.eval_dtype != next(self.model.parameters()).dtype:
            for name in find_linear_modules(self.model, self.profile.target_modules):  # float32 W_0 before the cast
                self._originals[name] = self._modules[name].weight.detach().float().clone()
            self.model.to(self.eval_dtype)
        self.prompts = {(t, s): d.prompts(s) for t, d in self.data.items() for s in SPLITS}
        self.targets = {(t, s): list(getattr(d, s)[1]) for t, d in self.data.items() for s in SPLITS}
        self.max_new_tokens = {t: self._new_tokens(d) for t, d in self.data.items()}
        self._cache: dict[tuple[str, str, str], list[str]] = {}
        self.seconds, self.prompts_generated, self.new_tokens = 0.0, 0, 0

    def _new_tokens(self, data: GenerativeTaskData) -> int:
        """The longest target of the task in tokens, + 1 for eos, capped at :data:`MAX_NEW_TOKENS`."""
        targets = [t for split in ("train", "val", "test") for t in getattr(data, split)[1]]
        longest = max((len(token_ids(self.tokenizer, " " + t.strip())) for t in targets), default=1)
        return min(longest + 1, int(self.profile.extra.get("max_new_tokens", MAX_NEW_TOKENS)))

    def _check(self, deltas: Mapping[str, torch.Tensor]) -> None:
        for name, delta in deltas.items():
            module = self._modules.get(name)
            if module is None or not hasattr(module, "weight"):
                raise LorakitError(f"module {name} is not in the base model; the adapter was made for another model")
            if tuple(delta.shape) != tuple(module.weight.shape):
                raise LorakitError(f"ΔW of {name} has shape {tuple(delta.shape)} but the weight is "
                                   f"{tuple(module.weight.shape)}; the adapter was made for another model")
            if not torch.isfinite(delta).all():
                raise LorakitError(f"merged ΔW of {name} contains NaN or inf; check the merge parameters")

    def _generate(self, task: str, split: str) -> list[str]:
        prompts = self.prompts[(task, split)]
        if not prompts:
            return []
        t0 = time.perf_counter()
        out = greedy_generate(self.model, self.tokenizer, prompts, max_new_tokens=self.max_new_tokens[task],
                              max_length=self.profile.max_length, batch_size=self.profile.eval_batch_size)
        self.seconds += time.perf_counter() - t0
        self.prompts_generated += len(prompts)
        self.new_tokens += sum(len(token_ids(self.tokenizer, o)) + 1 for o in out)
        return out

    def predictions_many(self, deltas: Mapping[str, torch.Tensor], keys: Sequence[tuple[str, str]]) -> dict:
        """``{(task, split): [prediction per example, in the split's order]}`` of ``W_0 + ΔW``, ΔW applied once."""
        for task, split in keys:
            if (task, split) not in self.prompts:
                raise LorakitError(f"task {task!r} ({split}) is not in this evaluator; known: {', '.join(self.data)}")
        fp = delta_fingerprint(deltas)
        missing = [k for k in keys if (k[0], k[1], fp) not in self._cache]
        if missing:
            self._check(deltas)
            try:
                self._apply(deltas)
                for task, split in missing:
                    self._cache[(task, split, fp)] = self._generate(task, split)
            finally:
                self._restore()
        return {k: self._cache[(k[0], k[1], fp)] for k in keys}

    def predictions(self, deltas: Mapping[str, torch.Tensor], task: str, split: str = "test") -> list[str]:
        """Greedy continuations of ``task``'s ``split`` prompts by ``W_0 + ΔW``."""
        return self.predictions_many(deltas, [(task, split)])[(task, split)]

    def _apply(self, deltas: Mapping[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, delta in deltas.items():
                weight = self._modules[name].weight
                if name not in self._originals:
                    self._originals[name] = weight.detach().float().clone()
                weight.copy_((self._originals[name] + delta.float().to(weight.device)).to(weight.dtype))

    def _restore(self) -> None:
        with torch.no_grad():
            for name, original in self._originals.items():
                weight = self._modules[name].weight
                weight.copy_(original.to(weight.dtype))

    def correct(self, deltas: Mapping[str, torch.Tensor], head, task: str, split: str = "test") -> torch.Tensor:
        """Per example of ``task``'s ``split``, in its order: is the greedy answer an exact match? (``head`` is unused.)"""
        preds = self.predictions(deltas, task, split)
        return torch.tensor([exact_match(p, y) for p, y in zip(preds, self.targets[(task, split)])], dtype=torch.bool)

    def correct_tasks(self, deltas_for: Callable[[str], Mapping[str, torch.Tensor]] | Mapping[str, torch.Tensor],
                      adapters: Mapping, split: str = "test") -> dict[str, torch.Tensor]:
        """:meth:`correct` per task; one merged ΔW is applied once for all tasks."""
        if not callable(deltas_for):
            self.predictions_many(deltas_for, [(t, split) for t in adapters])
        return super().correct_tasks(deltas_for, adapters, split)

    def normalized_matches(self, predictions: Sequence[str], task: str, split: str = "test") -> list[bool]:
        return [normalized_match(p, y) for p, y in zip(predictions, self.targets[(task, split)])]

    def describe(self, deltas: Mapping[str, torch.Tensor], split: str = "test") -> dict:
        """Per task: the predictions of ``W_0 + ΔW`` and their normalized-match rate; the mean over tasks."""
        preds = self.predictions_many(deltas, [(t, split) for t in self.data])
        norm = {t: self.normalized_matches(preds[(t, split)], t, split) for t in self.data}
        rate = {t: (sum(v) / len(v) if v else float("nan")) for t, v in norm.items()}
        return {"predictions": {t: preds[(t, split)] for t in self.data}, "normalized_match": rate,
                "avg_normalized_match": sum(rate.values()) / len(rate)}

    def describe_chosen(self, deltas: Mapping[str, torch.Tensor]) -> dict:
        """:meth:`describe` on test: what :func:`lorakit.run.search.select_and_report` adds to a record."""
        return self.describe(deltas, "test")

    def throughput(self) -> dict:
        """Generation work so far: prompts, new tokens, seconds, and both per second."""
        s = self.seconds or float("nan")
        return {"prompts": self.prompts_generated, "new_tokens": self.new_tokens, "seconds": round(self.seconds, 2),
                "prompts_per_second": round(self.prompts_generated / s, 2),
                "new_tokens_per_second": round(self.new_tokens / s, 2)}


@torch.inference_mode()
def greedy_generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, max_length: int = 256,
                    batch_size: int = 32) -> list[str]:
    """Greedy continuations of ``prompts`` (in their order), up to ``max_new_tokens`` or eos.

    Prompts are sorted by token length so each batch pads little, left-padded (:func:`encode_prompts`)
    and decoded with ``model.generate`` (KV cache, ``do_sample=False``); only the new tokens are
    decoded, special tokens dropped, each string stripped.
    """
    was_training = model.training
    model.eval()
    eos, pad = eos_token_id(tokenizer), pad_token_id(tokenizer)
    lengths = [len(token_ids(tokenizer, p)) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    out: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = encode_prompts(tokenizer, [prompts[i] for i in idx], max_length)
            enc = {k: v.to(device) for k, v in enc.items()}
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                                 pad_token_id=pad, num_beams=1)
            new = gen[:, enc["input_ids"].shape[1]:]
            for row, i in zip(new.tolist(), idx):
                if eos in row:
                    row = row[:row.index(eos)]
                out[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
    finally:
        model.train(was_training)
    return out


def exact_match(prediction: str, target: str) -> bool:
    """``prediction`` equals ``target`` after stripping surrounding whitespace."""
    return prediction.strip() == target.strip()


_SPACE = re.compile(r"\s+")


def normalize_answer(text: str) -> str:
    """Case-folded, inner whitespace collapsed to one space, surrounding whitespace and punctuation removed."""
    return _SPACE.sub(" ", text.casefold()).strip().strip(string.punctuation + " ")


def normalized_match(prediction: str, target: str) -> bool:
    """:func:`normalize_answer` of both sides are equal (``"Walked."`` matches ``"walked"``)."""
    return normalize_answer(prediction) == normalize_answer(target)


"""Tests of lorakit.adapters.diagnose and ``lorakit diagnose``: factored numbers against dense numpy brute
force, against lorakit.lora.measures on the same adapters, the bias-free magnitude variance, the A
overlap and the shared-initial-A artefact, the verdict, and the command line on adapter folders."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lorakit.lora import measures as analysis
from lorakit.cli import main
from lorakit.adapters.diagnose import HIGH_MV_FROBENIUS, SHARED_A, SHARED_A_COSINE, column_norms, diagnose_adapters, diagnose_folders
from lorakit.errors import LorakitError
from lorakit.lora.update import LoRAUpdate
from lorakit.lora.peft import write_adapter

MODULES = ("bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.value")


def update(gen, d_out=10, d_in=14, r=3, scale=1.0, scaling=2.0, A=None):
    A = torch.randn(r, d_in, generator=gen, dtype=torch.float64) if A is None else A
    return LoRAUpdate(A, scale * torch.randn(d_out, A.shape[0], generator=gen, dtype=torch.float64), scaling)


def adapters(n=3, seed=0, scales=None, shared_A=False, ranks=None):
    gen = torch.Generator().manual_seed(seed)
    shapes = {MODULES[0]: (10, 14), MODULES[1]: (6, 14)}
    common = {m: torch.randn(3, d_in, generator=gen, dtype=torch.float64) for m, (_, d_in) in shapes.items()}
    out = []
    for i in range(n):
        r = (ranks or [3] * n)[i]
        out.append({m: update(gen, d_out, d_in, r, (scales or [1.0] * n)[i], 1.5 + 0.5 * i,
                              A=common[m] if shared_A else None) for m, (d_out, d_in) in shapes.items()})
    return out


# ----------------------------------------------------------------------------------------------
# Factored numbers = dense brute force (numpy)
# ----------------------------------------------------------------------------------------------


def dense_reference(updates):
    dW = [u.delta(torch.float64).numpy() for u in updates]
    P = [np.linalg.pinv(u.A.double().numpy()) @ u.A.double().numpy() for u in updates]
    r = [np.linalg.matrix_rank(u.A.double().numpy()) for u in updates]
    n = len(updates)
    inner = np.array([[np.sum(dW[i] * dW[j]) for j in range(n)] for i in range(n)])
    overlap = np.array([[np.sum((P[i] @ P[j]) ** 2) / min(r[i], r[j]) for j in range(n)] for i in range(n)])
    A = [u.A.double().numpy() for u in updates]
    a_cos = np.array([[np.sum(A[i] * A[j]) / np.linalg.norm(A[i]) / np.linalg.norm(A[j]) if A[i].shape == A[j].shape
                       else 0.0 for j in range(n)] for i in range(n)])
    cross = np.array([[np.sum((dW[j] @ P[i]) ** 2) for j in range(n)] for i in range(n)])
    others = np.array([np.sum((sum(dW[j] for j in range(n) if j != i) @ P[i]) ** 2) for i in range(n)])
    return dW, inner, overlap, cross, others, a_cos


@pytest.mark.parametrize("ranks", [[3, 3, 3], [2, 3, 5]])
def test_factored_numbers_equal_dense_brute_force(ranks):
    ads = adapters(3, seed=1, scales=[1.0, 0.3, 2.0], ranks=ranks)
    d = diagnose_adapters(ads)
    for lay in d.layers:
        ups = [ad[lay.name] for ad in ads]
        dW, inner, overlap, cross, others, a_cos = dense_reference(ups)
        norms = np.sqrt(np.diag(inner))
        np.testing.assert_allclose(lay.norm, [np.linalg.norm(x) for x in dW], rtol=1e-6)
        np.testing.assert_allclose(lay.inner, inner, rtol=1e-6, atol=1e-9)
        row = lay.to_dict()
        np.testing.assert_allclose(row["cosine"], inner / np.outer(norms, norms), atol=1e-6)
        np.testing.assert_allclose(row["a_overlap"], overlap, atol=1e-6)
        np.testing.assert_allclose(row["a_cosine"], a_cos, atol=1e-6)
        np.testing.assert_allclose(row["energy_share"], cross / norms[None, :] ** 2, atol=1e-6)
        np.testing.assert_allclose(row["interference"], cross / norms[:, None] ** 2, atol=1e-6)
        np.testing.assert_allclose(row["interference_total"], others / norms**2, rtol=1e-6)
        np.testing.assert_allclose(np.diag(row["energy_share"]), 1.0, atol=1e-9)  # ΔW_i P_i = ΔW_i
        for u, x in zip(ups, dW):
            np.testing.assert_allclose(column_norms(u, "in").numpy(), np.linalg.norm(x, axis=0), rtol=1e-6)
            np.testing.assert_allclose(column_norms(u, "out").numpy(), np.linalg.norm(x, axis=1), rtol=1e-6)
    # overall: inner products and interference energies summed over layers
    flat = [np.concatenate([ad[m].delta(torch.float64).numpy().ravel() for m in MODULES]) for ad in ads]
    np.testing.assert_allclose(d.overall["norm"], [np.linalg.norm(f) for f in flat], rtol=1e-6)
    refs = [dense_reference([ad[m] for ad in ads]) for m in MODULES]
    cross, sq = sum(r[3] for r in refs), sum(np.diag(r[1]) for r in refs)
    np.testing.assert_allclose(d.overall["interference"], cross / sq[:, None], rtol=1e-6)


def test_diagnosis_never_forms_the_dense_update(monkeypatch):
    ads = adapters(3, seed=2)
    monkeypatch.setattr(LoRAUpdate, "delta", lambda self, dtype=None: pytest.fail("ΔW was formed"))
    d = diagnose_adapters(ads)
    assert np.isfinite(d.overall["norm"]).all()


# ----------------------------------------------------------------------------------------------
# The same numbers as lorakit.lora.measures
# ----------------------------------------------------------------------------------------------


def test_diagnosis_reports_the_numbers_of_lorakit_analysis():
    ads = adapters(4, seed=3, scales=[1.0, 0.2, 0.5, 3.0])
    d = diagnose_adapters(ads)
    kinds = {"column_in": dict(axis="in"), "column_out": dict(axis="out"), "frobenius": dict(kind="frobenius")}
    for key, kw in kinds.items():
        assert d.overall["magnitude_variance"][key] == pytest.approx(analysis.magnitude_variance(ads, **kw), rel=1e-9)
        assert d.overall["magnitude_variance_pairwise"][key] == pytest.approx(
            analysis.magnitude_variance_pairwise(ads, **kw), rel=1e-9)
        per = analysis.magnitude_variance(ads, per_layer=True, **kw)
        per_pw = analysis.magnitude_variance_pairwise(ads, per_layer=True, **kw)
        for lay in d.layers:
            assert lay.magnitude_variance[key] == pytest.approx(per[lay.name], rel=1e-9)
            assert lay.magnitude_variance_pairwise[key] == pytest.approx(per_pw[lay.name], rel=1e-9)
    np.testing.assert_allclose(d.overall["cosine"], analysis.cosine_matrix(ads).numpy(), atol=1e-9)
    np.testing.assert_allclose(d.overall["a_overlap"], analysis.subspace_overlap(ads).numpy(), atol=1e-9)
    per_overlap = analysis.subspace_overlap(ads, per_layer=True)
    for lay in d.layers:
        np.testing.assert_allclose(lay.a_overlap, per_overlap[lay.name].numpy(), atol=1e-9)
        np.testing.assert_allclose(lay.to_dict()["cosine"], analysis.cosine_matrix([ad[lay.name] for ad in ads]).numpy(),
                                   atol=1e-9)


# ----------------------------------------------------------------------------------------------
# A overlap, bias-free magnitude variance
# ----------------------------------------------------------------------------------------------


def one_layer(*updates):
    return diagnose_adapters([{"q": u} for u in updates]).layers[0]


def test_a_overlap_identical_orthogonal_random():
    gen = torch.Generator().manual_seed(4)
    eye = torch.eye(40, dtype=torch.float64)
    a = update(gen, d_in=40, A=eye[:4] * 3.0)
    same = update(gen, d_in=40, A=a.A.clone())
    mixed = update(gen, d_in=40, A=torch.randn(4, 4, generator=gen, dtype=torch.float64) @ a.A)  # same row space
    ortho = update(gen, d_in=40, A=eye[4:8])
    lay = one_layer(a, same, mixed, ortho)
    np.testing.assert_allclose(lay.a_overlap[:3, :3], 1.0, atol=1e-9)
    np.testing.assert_allclose(lay.a_overlap[3, :3], 0.0, atol=1e-12)
    d, r = 300, 4
    rand = [update(gen, d_in=d, r=r) for _ in range(6)]
    lay = one_layer(*rand)
    off = lay.a_overlap[~np.eye(6, dtype=bool)]
    assert off.mean() == pytest.approx(r / d, rel=0.25) and lay.a_overlap_random == pytest.approx(r / d)
    assert off.max() < 0.1
    # a rank-deficient A counts with its numerical rank: span{e0, e1} (3 rows, rank 2) inside span{e0, e1, e2}
    low = update(gen, d_in=40, A=torch.stack([eye[0], eye[1], eye[0] + eye[1]]))
    lay = one_layer(low, update(gen, d_in=40, A=eye[:3]))
    assert lay.ranks == [3, 3] and lay.a_overlap[0, 1] == pytest.approx(1.0)
    zero = one_layer(update(gen, d_in=40, A=torch.zeros(3, 40, dtype=torch.float64)), a)
    assert zero.a_overlap[0, 1] == 0.0 and zero.a_overlap[0, 0] == 0.0


def test_pairwise_magnitude_variance_does_not_trend_with_n():
    gen = torch.Generator().manual_seed(5)
    means, errs = {}, {}
    for n in (2, 4, 8):
        values = []
        for _ in range(150):
            ups = [update(gen, 8, 6, 2, scale=math.exp(0.5 * torch.randn(1, generator=gen).item())) for _ in range(n)]
            values.append(one_layer(*ups).magnitude_variance_pairwise["column_in"])
        means[n], errs[n] = np.mean(values), np.std(values) / math.sqrt(len(values))
    for n in (4, 8):
        assert abs(means[n] - means[2]) < 4 * math.hypot(errs[n], errs[2]) and abs(means[n] / means[2] - 1) < 0.06, means


# ----------------------------------------------------------------------------------------------
# Verdict
# ----------------------------------------------------------------------------------------------


def test_shared_initial_a_gives_overlap_one_and_the_verdict_says_so():
    d = diagnose_adapters(adapters(2, seed=6, shared_A=True))
    assert d.overall["a_overlap_mean"] == pytest.approx(1.0)
    assert d.overall["a_overlap"][0][1] == pytest.approx(1.0)
    assert d.overall["a_cosine"][0][1] == pytest.approx(1.0)
    assert any("#0-#1" in w and "initial A" in w and "per-task seeds" in w for w in d.verdict.warnings), d.verdict
    assert "initial A" in d.verdict.text()
    # with their own random A (r = 3 of d_in = 14): low overlap, no warning
    fresh = diagnose_adapters(adapters(2, seed=6))
    assert fresh.overall["a_overlap_mean"] < SHARED_A and not fresh.verdict.warnings


def test_shared_initial_a_is_seen_by_the_a_cosine_after_training_moved_a():
    """A = A0 + a move as large as A0 (training): the subspace overlap falls below 0.5, the A cosine stays ~0.5."""
    gen = torch.Generator().manual_seed(13)
    d_in, r = 384, 8
    A0 = torch.randn(r, d_in, generator=gen, dtype=torch.float64)
    moved = [update(gen, 64, d_in, r, A=A0 + torch.randn(r, d_in, generator=gen, dtype=torch.float64)) for _ in range(2)]
    other = update(gen, 64, d_in, r)
    d = diagnose_adapters([{"q": u} for u in (*moved, other)])
    assert d.overall["a_overlap"][0][1] < SHARED_A and d.overall["a_cosine"][0][1] >= SHARED_A_COSINE
    assert abs(d.overall["a_cosine"][0][2]) < 0.1 and abs(d.overall["a_cosine"][1][2]) < 0.1
    assert [p[:2] for p in d.overall["shared_init_pairs"]] == [[0, 1]]
    assert len(d.verdict.warnings) == 1 and "#0-#1" in d.verdict.warnings[0] and "#2" not in d.verdict.warnings[0]


def test_verdict_favours_do_for_unequal_magnitudes_and_task_arithmetic_for_similar_ones():
    gen = torch.Generator().manual_seed(7)
    similar = [{"q": update(gen, 64, 256, 8)} for _ in range(3)]
    d = diagnose_adapters(similar)
    assert d.verdict.method == "task_arithmetic" and "task arithmetic" in d.verdict.reasons[0]
    unequal = [{"q": LoRAUpdate(ad["q"].A, c * ad["q"].B, ad["q"].scaling)} for ad, c in zip(similar, (1, 4, 0.25))]
    d = diagnose_adapters(unequal)
    assert d.overall["magnitude_variance_pairwise"]["frobenius"] >= HIGH_MV_FROBENIUS
    assert d.verdict.method == "do" and "magnitude" in d.verdict.reasons[0] and "§3.5" in d.verdict.reasons[0]


def test_zero_update_layer_gives_finite_numbers():
    ads = adapters(2, seed=8)
    ads[0][MODULES[1]] = LoRAUpdate(ads[0][MODULES[1]].A, torch.zeros(6, 3, dtype=torch.float64), 1.0)
    blob = json.dumps(diagnose_adapters(ads).to_dict(), allow_nan=False)  # raises on NaN or inf
    assert '"cosine"' in blob


def test_in_memory_errors():
    ads = adapters(2, seed=9)
    with pytest.raises(LorakitError, match="at least 2"):
        diagnose_adapters(ads[:1])
    bad = {m: LoRAUpdate(u.A.clone(), u.B.clone(), u.scaling) for m, u in ads[1].items()}
    bad[MODULES[0]].B[0, 0] = float("nan")
    with pytest.raises(LorakitError, match="NaN"):
        diagnose_adapters([ads[0], bad])
    with pytest.raises(LorakitError, match="different modules"):
        diagnose_adapters([ads[0], {MODULES[0]: ads[1][MODULES[0]]}])
    with pytest.raises(LorakitError, match="names"):
        diagnose_adapters(ads, names=["one"])


def test_progress_bar_on_stderr(capsys):
    diagnose_adapters(adapters(2, seed=10), progress=True)
    assert "diagnosing" in capsys.readouterr().err
    diagnose_adapters(adapters(2, seed=10))  # small adapters: no bar by default
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------------------------
# Command line on adapter folders
# ----------------------------------------------------------------------------------------------


@pytest.fixture()
def folders(tmp_path):
    ads = adapters(3, seed=11, scales=[1.0, 0.5, 2.0])
    paths = [write_adapter({m: u.to(torch.float32) for m, u in ad.items()}, tmp_path / f"task{i}", "tiny-bert",
                           task_type="SEQ_CLS") for i, ad in enumerate(ads)]
    return tmp_path, paths


def cli(argv, capsys):
    rc = main(["diagnose", *map(str, argv)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_error_line(rc, err):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_cli_writes_json_and_figure(folders, capsys):
    tmp, paths = folders
    rc, out, err = cli([*paths, "--json", tmp / "out.json", "--figure", tmp / "fig.png"], capsys)
    assert rc == 0, err
    assert "the numbers favour:" in out and "magnitude variance" in out and "A overlap" in out
    data = json.loads((tmp / "out.json").read_text())
    assert {"adapters", "overall", "layers", "verdict", "definitions"} <= set(data)
    assert data["n_adapters"] == 3 and len(data["layers"]) == 2
    for key in ("norm", "magnitude_variance", "magnitude_variance_pairwise", "cosine", "a_overlap", "a_cosine", "energy_share",
                "interference", "interference_total"):
        assert key in data["overall"] and key in data["layers"][0], key
    assert data["verdict"]["method"] in ("do", "task_arithmetic") and data["verdict"]["reasons"]
    # the JSON holds the numbers of the in-memory diagnosis and of lorakit.lora.measures on the read adapters
    ref = diagnose_folders(paths)
    assert data["overall"]["magnitude_variance_pairwise"] == pytest.approx(ref.overall["magnitude_variance_pairwise"])
    from lorakit.lora.peft import read_adapter
    read = [read_adapter(p) for p in paths]
    assert data["overall"]["magnitude_variance"]["column_in"] == pytest.approx(analysis.magnitude_variance(read), rel=1e-6)
    np.testing.assert_allclose(data["overall"]["a_overlap"], analysis.subspace_overlap(read).numpy(), atol=1e-6)
    assert (tmp / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp.iterdir() if p.name.endswith(".part")]


def test_cli_bad_inputs_are_one_line_errors(folders, capsys):
    tmp, paths = folders
    line = one_error_line(*cli([paths[0], tmp / "missing"], capsys)[::2])
    assert "does not exist" in line
    assert "at least 2" in one_error_line(*cli([paths[0]], capsys)[::2])
    assert "at least 2" in one_error_line(*cli([], capsys)[::2])
    ads = adapters(1, seed=12)
    other = write_adapter({m: u.to(torch.float32) for m, u in ads[0].items()}, tmp / "other_base", "another-model",
                          task_type="SEQ_CLS")
    assert "base model" in one_error_line(*cli([paths[0], other], capsys)[::2])
    fewer = write_adapter({MODULES[0]: ads[0][MODULES[0]].to(torch.float32)}, tmp / "query_only", "tiny-bert",
                          task_type="SEQ_CLS")
    assert "different modules" in one_error_line(*cli([paths[0], fewer], capsys)[::2])
    nan = {m: u.to(torch.float32) for m, u in ads[0].items()}
    nan[MODULES[1]].A[0, 0] = float("nan")
    write_adapter(nan, tmp / "nan", "tiny-bert", task_type="SEQ_CLS")
    line = one_error_line(*cli([paths[0], tmp / "nan"], capsys)[::2])
    assert "NaN" in line and "nan" in line
    assert ".png" in one_error_line(*cli([*paths, "--figure", tmp / "fig.jpg"], capsys)[::2])
    assert not (tmp / "fig.jpg").exists()


def test_cli_help_lists_diagnose(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "diagnose" in capsys.readouterr().out


def test_same_folder_twice_is_the_shared_a_case(folders, capsys):
    tmp, paths = folders
    rc, out, _ = cli([paths[0], paths[0], "--json", tmp / "twice.json"], capsys)
    data = json.loads((tmp / "twice.json").read_text())
    assert rc == 0 and data["overall"]["a_overlap_mean"] == pytest.approx(1.0) and "initial A" in out
    assert data["overall"]["cosine"][0][1] == pytest.approx(1.0)


def test_short_layer_names_keep_the_layer_index():
    from lorakit.adapters.diagnose import short_layer_name

    assert short_layer_name("encoder.layer.3.attention.self.query") == "3.query"
    assert short_layer_name("model.layers.12.self_attn.q_proj") == "12.q_proj"
    assert short_layer_name("classifier") == "classifier"

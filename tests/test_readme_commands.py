"""README cannot rot: every command of its command list runs, at ci size, and succeeds.

The list is the code block under "## The command line". Each line's command (the words before its
first placeholder or option in brackets) must have a concrete ci-size invocation in :data:`SMOKE`, and
each of those must exit 0 and write what it says. A command added to README without a smoke run here,
or one removed from README but still smoked, fails the first test. The runs go through
``lorakit.cli.main`` in this process (a subprocess per command would cost seconds of imports each).
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import pytest

from lorakit.cli import main
from lorakit.data.tasks import get_card

ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDER = re.compile(r"^(\[|#|[A-Z]+(\.\.\.)?$|[A-Z]+\.\.\.)")


def readme_commands() -> list[str]:
    """The ``lorakit ...`` lines of README's command-line block."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## The command line"):]
    block = section[section.index("```bash") + len("```bash"): section.index("```", section.index("```bash") + 7)]
    return [line.strip() for line in block.splitlines() if line.strip().startswith("lorakit ")]


def command_key(line: str) -> str:
    """``lorakit run --model smollm2 [--profile P] ...`` → ``lorakit run --model smollm2``."""
    words = []
    for word in line.split():
        if PLACEHOLDER.match(word):
            break
        words.append(word)
    return " ".join(words)


def _fake_bigbench_sdist(path: Path) -> Path:
    """A stand-in for the bigbench-1.0.0 sdist with one generative task (the real one is 358 MB and gone)."""
    payload = json.dumps({"examples": [{"input": f"walk{i}", "target": f"walked{i}"} for i in range(20)]}).encode()
    with tarfile.open(path, "w:gz") as tar:
        folder = get_card("past_tense").source["task"]
        info = tarfile.TarInfo(f"bigbench-1.0.0/bigbench/benchmark_tasks/{folder}/task.json")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return path


RUN = ["--profile", "ci", "--tasks", "rt_subjectivity", "election_tweets", "--methods", "task_arithmetic",
       "--inits", "standard", "--seeds", "0", "--no-progress", "--no-figures"]
CAUSAL = ["--model", "smollm2", "--profile", "ci", "--methods", "task_arithmetic", "--inits", "standard",
          "--seeds", "0", "--no-progress", "--no-figures"]

#: the ci profile's own sizes, so the adapters are the cache's (the ci_adapters fixture's, notebook 07's)
#: README command → (argv at ci size given the scratch folder and two trained adapter folders, file it writes)
SMOKE = {
    "lorakit run": (lambda d, a: ["run", *RUN, "--out", f"{d}/run"], "run/results.json"),
    "lorakit run --model smollm2": (lambda d, a: ["run", *CAUSAL, "--out", f"{d}/causal"], "causal/predictions.jsonl"),
    "lorakit combine": (lambda d, a: ["combine", f"{d}/run", "--out", f"{d}/combined", "--no-figures"],
                        "combined/results.md"),
    "lorakit tasks": (lambda d, a: ["tasks"], None),
    "lorakit data fetch": (lambda d, a: ["data", "fetch", "past_tense", "--sdist", str(_fake_bigbench_sdist(d / "bb.tar.gz"))],
                           "cache/bigbench/linguistic_mappings/past_tense_json/task.json"),
    "lorakit data export": (lambda d, a: ["data", "export", f"{d}/export", "--tasks", "rt_subjectivity"],
                            "export/manifest.json"),
    "lorakit merge": (lambda d, a: ["merge", *a, "--method", "ties", "--out", f"{d}/merged", "--no-progress"],
                      "merged/adapter_config.json"),
    "lorakit bench": (lambda d, a: ["bench", "--tasks", "2", "--repeats", "1", "--methods", "task_arithmetic",
                                    "--out", f"{d}/bench.json"], "bench.json"),
    "lorakit diagnose": (lambda d, a: ["diagnose", *a, "--json", f"{d}/diag.json"], "diag.json"),
}


def test_every_readme_command_has_a_smoke_run():
    keys = [command_key(line) for line in readme_commands()]
    assert len(keys) >= 8, "README's command list was not found"
    assert sorted(set(keys)) == sorted(SMOKE), "README's command list and this test's SMOKE table disagree"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("readme")


@pytest.mark.slow
@pytest.mark.parametrize("key", list(SMOKE))  # in order: combine reads the run's folder
def test_readme_command_runs_at_ci_size(key, scratch, ci_adapters, monkeypatch, capsys):
    monkeypatch.setenv("LORAKIT_PROFILE", "ci")
    if key == "lorakit data fetch":  # the fetch writes into the cache: a scratch one, not the suite's
        monkeypatch.setenv("LORAKIT_CACHE", str(scratch / "cache"))
    argv_of, writes = SMOKE[key]
    adapters = [str(ci_adapters[t].path) for t in sorted(ci_adapters)]
    assert main(argv_of(scratch, adapters)) == 0, capsys.readouterr().err
    if writes:
        assert (scratch / writes).is_file(), writes
    if key == "lorakit tasks":
        assert "vader_sentiment" in capsys.readouterr().out

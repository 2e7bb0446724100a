"""Each notebook's first cell states the runtime that the committed timing records measured.

The records are ``data/reference/notebook-runtime/*.json`` (written by ``tools/time_notebooks.py``:
each notebook executed top to bottom in a fresh kernel, from an empty adapter cache). A notebook's
header says ``` `ci` ≈ N min · `cpu` ≈ M min ```; N and M must be the record's wall time rounded to
whole minutes (at least 1), so a slower notebook cannot keep an old promise. The course bar: 00–05
finish in under an hour in ``cpu``.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "notebooks" / "src"
RECORDS = ROOT / "data" / "reference" / "notebook-runtime"
COURSE = [s.stem for s in sorted(SRC.glob("0*.py"))]


def _tool():
    spec = importlib.util.spec_from_file_location("runtime_headers", ROOT / "tools" / "runtime_headers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TOOL = _tool()


def measured_seconds(profile: str) -> dict[str, float]:
    """``{notebook: wall seconds}`` from the newest record of ``profile`` that times it."""
    return {k: v["wall_s"] for k, v in TOOL.newest(profile).items()}


def measured_minutes(profile: str) -> dict[str, int]:
    """Wall time rounded to whole minutes, at least 1: what a header states."""
    return {k: v["minutes"] for k, v in TOOL.newest(profile).items()}


def stated_minutes(stem: str) -> dict[str, int]:
    """``{profile: N}`` from the ``Runtime`` line of the notebook's first markdown cell."""
    text = (SRC / f"{stem}.py").read_text().split("# %%\n")[0]
    line = TOOL.RUNTIME_PARAGRAPH.search(text)
    assert line, f"{stem}: the first cell has no 'Runtime' line"
    return {p: int(n) for p, n in re.findall(r"`(ci|cpu|gpu)` ≈ (\d+) min", line.group(0))}


def test_records_are_complete_and_say_how_they_were_made():
    files = sorted(RECORDS.glob("*.json"))
    assert files, "no timing record committed"
    for path in files:
        rec = json.loads(path.read_text())
        for key in ("profile", "cache", "command", "date", "machine", "notebooks", "threads_env"):
            assert key in rec, f"{path.name} lacks {key!r}"
        assert rec["command"].startswith("python tools/time_notebooks.py")
        assert all(t["wall_s"] > 0 and t["cpu_s"] > 0 for t in rec["notebooks"].values())


@pytest.mark.parametrize("stem", COURSE)
def test_header_states_the_measured_runtime(stem):
    stated = stated_minutes(stem)
    for profile in ("ci", "cpu"):
        measured = measured_minutes(profile)
        if stem not in measured:
            continue
        assert profile in stated, f"{stem}: measured in {profile} ({measured[stem]} min) but the header does not say"
        assert stated[profile] == measured[stem], (
            f"{stem}: header says `{profile}` ≈ {stated[profile]} min, the record measured {measured[stem]} min; "
            "update the first cell (and README's notebook table)")


def test_every_notebook_is_timed_in_ci_and_the_course_in_cpu():
    assert set(COURSE) <= set(measured_minutes("ci")), "time every notebook in ci"
    assert {s for s in COURSE if s[:2] <= "05"} <= set(measured_minutes("cpu")), "time 00–05 in cpu"


def test_course_fits_an_hour_in_cpu():
    cpu = measured_seconds("cpu")
    minutes = sum(v for k, v in cpu.items() if k[:2] <= "05") / 60
    assert cpu and minutes < 60, f"00–05 take {minutes:.0f} min in cpu; the course promises under an hour"


def test_readme_table_matches_the_records():
    readme = (ROOT / "README.md").read_text()
    ci, cpu = measured_minutes("ci"), measured_minutes("cpu")
    for stem in COURSE:
        row = re.search(rf"^\| {stem[:2]} \| `{stem}` \|.*$", readme, re.M)
        assert row, f"README's notebook table has no row for {stem}"
        for profile, measured in (("ci", ci), ("cpu", cpu)):
            if stem in measured:
                assert f"`{profile}` {measured[stem]} min" in row.group(0), (
                    f"README row {stem} should say `{profile}` {measured[stem]} min")

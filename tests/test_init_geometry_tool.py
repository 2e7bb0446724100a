"""tools/init_geometry.py on a stand-in ci run: every init and seed, the files it writes, a clear refusal."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from lorakit.errors import LorakitError
from lorakit.profiles import get_profile

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("init_geometry_tool", ROOT / "tools" / "init_geometry.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run_folder(tmp_path: Path, **config_changes) -> Path:
    p = get_profile("ci")
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in p.__dict__.items()}
    cfg.update(config_changes)
    results = {"profile": "ci", "profile_config": cfg, "tasks": list(p.tasks),
               "inits": ["standard", "osrm", "random_orthonormal"], "seeds": [0, 1]}
    (tmp_path / "results.json").write_text(json.dumps(results))
    return tmp_path


@pytest.mark.slow
def test_tool_writes_every_init_and_seed(tmp_path, capsys):
    folder = _run_folder(tmp_path)
    assert _tool().main([str(folder)]) == 0
    geom = json.loads((folder / "init_geometry.json").read_text())
    assert geom["command"] == f"python tools/init_geometry.py {folder}"
    assert list(geom["inits"]) == ["standard", "osrm", "random_orthonormal"]
    assert geom["inits"]["osrm"]["seeds"] == [0]  # OSRM's A does not depend on the seed
    assert geom["inits"]["random_orthonormal"]["seeds"] == [0, 1]
    ro = geom["inits"]["random_orthonormal"]["overlap_per_seed"]
    assert ro[0] != ro[1]  # two seeds, two random subspaces
    for g in geom["inits"].values():
        assert 0 <= g["overlap"] <= 1 and 0 <= g["energy_mean"] <= 1
        assert g["energy_mean"] == pytest.approx(sum(g["energy"].values()) / len(g["energy"]))
    assert geom["inits"]["osrm"]["energy_mean"] < geom["random"]
    md = (folder / "init_geometry.md").read_text()
    assert sum(line.startswith("|") for line in md.splitlines()) == 5 and "| random_orthonormal | 2 |" in md  # header, rule, three inits


def test_tool_refuses_a_run_of_other_settings_and_writes_nothing(tmp_path):
    folder = _run_folder(tmp_path, rank=4)
    with pytest.raises(LorakitError, match="rank"):
        _tool().main([str(folder)])
    assert sorted(x.name for x in folder.iterdir()) == ["results.json"]

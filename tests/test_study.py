"""benchmarks/study.py: each run's command carries the study's augmentation choice, and a study's plan
keeps the choice it was made with."""
import json
import subprocess
import sys
from types import SimpleNamespace

from conftest import ROOT


def study():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import study

    return study


def test_a_run_trains_with_or_without_the_augmentation_as_planned(tmp_path):
    s = study()
    a = SimpleNamespace(train=str(tmp_path))
    with_aug, without = (s.train_command(a, "noise", "tiny", 100, tmp_path / "m.safetensors", aug) for aug in (True, False))
    assert "--no-augment" not in with_aug and without == with_aug + ["--no-augment"]
    assert without[without.index("--steps") + 1] == "100" and without[without.index("--ema-start") + 1] == "20"


def test_a_plan_made_with_the_augmentation_refuses_no_augment(tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps({"minutes": 1, "runs": {}, "machine": "x", "torch": "x", "date": "x"}))
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "study.py"), "--train", str(tmp_path), "--test", str(tmp_path),
                        "--out", str(tmp_path), "--no-augment"], capture_output=True, timeout=120)
    err = r.stderr.decode().strip().splitlines()
    assert r.returncode != 0 and len(err) == 1 and err[0].startswith("study.py: error:") and "with the augmentation" in err[0]


def test_unknown_methods_nets_and_runs_outside_the_plan_are_one_line(tmp_path):
    def run(*args):
        r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "study.py"), "--train", str(tmp_path), "--test", str(tmp_path),
                            "--out", str(tmp_path), *args], capture_output=True, timeout=120)
        err = r.stderr.decode().strip().splitlines()
        assert r.returncode != 0 and len(err) == 1 and err[0].startswith("study.py: error:"), r.stderr.decode()[-2000:]
        return err[0]

    assert "unknown method 'foo'" in run("--methods", "foo")
    assert "unknown network 'huge'" in run("--methods", "noise", "--nets", "huge")
    (tmp_path / "plan.json").write_text(json.dumps({"minutes": 1, "runs": {"noise-default-tiny": {}}, "machine": "x", "torch": "x", "date": "x"}))
    assert "no run of --methods blur on --nets tiny" in run("--methods", "blur", "--nets", "tiny")

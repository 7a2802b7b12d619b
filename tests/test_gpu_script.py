"""benchmarks/gpu.py is session A's one call on a lent GPU (benchmarks/GPU.md): its dry run on the
CPU must keep working, write its JSON and record a failing row instead of dying."""
import json
import subprocess
import sys

from conftest import ROOT


def run_gpu_py(tmp_path, *args):
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, ROOT / "benchmarks" / "gpu.py", "--tiny", "--json", out, *args],
                       capture_output=True, text=True, timeout=300)
    return r, json.loads(out.read_text())


def test_dry_run_of_the_large_image_rows_writes_both(tmp_path):
    r, result = run_gpu_py(tmp_path, "--only", "ceilings,large")
    assert r.returncode == 0, r.stderr
    assert result["errors"] == [] and result["ceilings"] == {"matmul_tflops": None, "copy_tb_s": None}
    rows = {row["workload"]: row for row in result["rows"]}
    assert set(rows) == {"R call 12 MP, whole", "R call 12 MP, 512 px tiles"}
    assert rows["R call 12 MP, whole"]["tiles"] == 1 and rows["R call 12 MP, 512 px tiles"]["tiles"] > 1
    assert all(row["value"] > 0 and row["unit"] == "s" for row in rows.values())
    assert "| R call 12 MP, 512 px tiles |" in r.stdout


def test_a_row_past_the_deadline_is_recorded_not_fatal(tmp_path):
    r, result = run_gpu_py(tmp_path, "--only", "large", "--deadline", "1")
    assert r.returncode == 0, r.stderr
    assert result["rows"] == [] and len(result["errors"]) == 2
    assert all("OutOfTime" in e["error"] and "--deadline" in e["error"] for e in result["errors"])

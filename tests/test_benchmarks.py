"""benchmarks/train.py runs on the CPU and prints what issue #42 reads off it: img/s and GFLOP/s of each
variant, and this machine's own matmul rate measured in the same run with each row's share of it."""
import re
import subprocess
import sys

from conftest import ROOT


def test_train_benchmark_prints_both_variants_and_the_matmul_rate():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train.py"), "--device", "cpu", "--net", "tiny", "--batch", "4",
                        "--cases", "noise", "--threads", "1", "--variants", "before,after", "--steps", "2", "--warmup", "1"],
                       capture_output=True, timeout=300)
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    matmul = float(re.search(r"1024\^2 fp32 matmul ([\d,.]+) GFLOP/s", out).group(1).replace(",", ""))
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| noise noise T=200")]
    assert [row[0].rsplit(", ", 1)[1] for row in rows] == ["before", "after"] and matmul > 0
    for row in rows:  # GFLOP/img is printed to 2 decimals: 0.36 stands for 0.355-0.365
        rate, gflop, gflops, share = float(row[3].replace(",", "")), float(row[4]), float(row[5].replace(",", "")), row[6]
        assert abs(rate * gflop - gflops) <= 0.02 * gflops + 0.1 and abs(int(share.rstrip("%")) - 100 * gflops / matmul) <= 1

"""How long colddiff takes to answer: `--help`, a mistyped command line, `info`, and small real commands.

    python benchmarks/startup.py              # median of 5 fresh processes each
    python benchmarks/startup.py --runs 11

Each command runs in a fresh `python -m colddiff` process (what a shell pays), and the table says
whether it imported torch (its 2-3 s import is most of a small command's time: the CLI imports it
only in the commands that compute). Prints the median and the fastest wall time per command.
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "tests" / "data" / "fmnist"

# print whether torch was imported, at exit, whatever the command did (typer exits through SystemExit)
PROBE = ("import atexit, sys; atexit.register(lambda: print('torch' in sys.modules, file=sys.stderr)); import colddiff; "
         "sys.argv = ['colddiff', *sys.argv[1:]]; colddiff.main()")


def commands(tmp: Path) -> list[tuple[str, list[str]]]:
    img = str(sorted(IMAGE.iterdir())[0])
    return [
        ("colddiff --help", ["--help"]),
        ("colddiff degrade --help", ["degrade", "--help"]),
        ("colddiff restore --steps many x.png (usage error)", ["restore", "--steps", "many", "x.png"]),
        ("colddiff --version", ["--version"]),
        ("colddiff ops", ["ops"]),
        ("colddiff info (a 28 px image)", ["info", img]),
        ("colddiff degrade (28 px image to a file)", ["degrade", img, "--op", "blur", "-o", str(tmp / "d.png"), "--force"]),
    ]


def time_one(args: list[str]) -> tuple[float, bool]:
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    return seconds, r.stderr.strip().splitlines()[-1] == "True"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="fresh processes per command")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for name, args in commands(Path(tmp)):
            runs = [time_one(args) for _ in range(a.runs)]
            times = [s for s, _ in runs]
            rows.append((name, statistics.median(times), min(times), runs[-1][1]))
    print(f"| command ({a.runs} fresh processes each) | median | fastest | imports torch |")
    print("|---|---|---|---|")
    for name, median, fastest, torch in rows:
        print(f"| `{name}` | {median:.2f} s | {fastest:.2f} s | {'yes' if torch else 'no'} |")


if __name__ == "__main__":
    main()

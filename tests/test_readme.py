"""The README's tour and workflows run as written, in order, on the repository's own small data, and
print what the README shows them printing."""
import os
import re
import subprocess
import sys

from conftest import ROOT


def blocks():
    """[(commands of a ```sh block, the lines of the ```text block just after it, or [])] from the tour to
    the operators table."""
    text = (ROOT / "README.md").read_text()
    part = text[text.index("## A tour") : text.index("## Operators")]
    found = re.findall(r"```(sh|text)\n(.*?)```", part, re.S)
    out = []
    for kind, body in found:
        lines = [line for line in body.splitlines() if line.strip()]
        if kind == "sh":
            out.append((lines, []))
        else:
            out[-1][1].extend(lines)
    return out


def test_the_readme_tour_and_workflows_run_as_written(tmp_path):
    shim = tmp_path / "bin" / "colddiff"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m colddiff "$@"\n')
    shim.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    for name in ("examples", "tests"):  # the paths of the README, as in a clone
        (work / name).symlink_to(ROOT / name)
    env = {"PATH": f"{shim.parent}:/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    env |= {k: v for k, v in os.environ.items() if k == "OMP_NUM_THREADS"}  # conftest's share of the cores
    ran = 0
    for commands, shown in blocks():
        said = ""
        for command in commands:
            r = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=work, env=env, capture_output=True, timeout=300)
            said += r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
            assert r.returncode == 0, (command, said[-2000:])
            ran += 1
        flat = {" ".join(line.split()) for line in said.splitlines()}
        for line in shown:  # what the README shows the block's commands printing
            assert " ".join(line.split()) in flat, (commands, line, said[-2000:])
    assert ran >= 10 and (work / "mine.safetensors").exists() and (work / "restored").is_dir()

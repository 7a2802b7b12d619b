"""The docs stay true: the command reference is the code's, and every link goes somewhere."""
import re
import runpy

from conftest import ROOT


def test_the_command_reference_and_the_training_defaults_are_not_stale():
    """docs/cli.md, and the table of defaults in docs/training.md, are what docs/make_cli.py writes
    from the code today: run it after changing an option or a default."""
    made = runpy.run_path(str(ROOT / "docs" / "make_cli.py"))
    assert (ROOT / "docs" / "cli.md").read_text() == made["reference"](), "docs/cli.md is stale: run python docs/make_cli.py"
    page = (ROOT / "docs" / "training.md").read_text()
    assert page == made["with_defaults"](page), "docs/training.md's defaults are stale: run python docs/make_cli.py"
    assert "| `--lr` | `2e-05` | `5e-05` |" in page  # the table is there, with the papers' values


def anchors(path) -> set:
    """The #anchors GitHub makes of a Markdown file's headings."""
    heads = re.findall(r"^#+ (.+)$", path.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_every_link_in_the_readme_and_docs_resolves():
    pages = [ROOT / "README.md", ROOT / "RESULTS.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in anchors(dest)):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert len(pages) >= 3 and broken == []

"""Write docs/cli.md, the command reference, from the code: every command's help and options as
`colddiff COMMAND --help` has them (tests/test_docs.py fails when it is stale).

    python docs/make_cli.py          # rewrite docs/cli.md
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def option_row(p) -> str:
    """| option | takes | default | what it does | of one click parameter."""
    flags = " / ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
    takes = "" if p.is_flag else (p.metavar or p.type.name.upper())
    default = p.default if p.default not in (None, (), []) and not callable(p.default) else ""
    default = "" if p.is_flag and default is False else "required" if p.required else f"`{default}`" if default != "" else ""
    text = (p.help or "").replace("|", "\\|")
    return f"| {flags} | {takes} | {default} | {text} |"


def reference() -> str:
    import typer.main

    import colddiff

    group = typer.main.get_command(colddiff.app)
    lines = ["# Command reference", "", "Generated from the code by `python docs/make_cli.py`; `colddiff COMMAND --help` says the same.", ""]
    lines += [f"- [`colddiff {name}`](#colddiff-{name})" for name in group.commands] + [""]
    lines += ["Options before the command: " + ", ".join(f"`{p.opts[0]}`" for p in group.params if p.param_type_name == "option"), ""]
    for name, cmd in group.commands.items():
        args = " ".join(p.metavar or p.name.upper() for p in cmd.params if p.param_type_name == "argument")
        lines += [f"## colddiff {name}", "", "```", f"colddiff {name} [OPTIONS] {args}".rstrip(), "```", "", cmd.help or "", ""]
        options = [p for p in cmd.params if p.param_type_name == "option" and not p.hidden]
        lines += ["| option | takes | default | what it does |", "|---|---|---|---|", *map(option_row, options), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    (ROOT / "docs" / "cli.md").write_text(reference())
    print(f"wrote {ROOT / 'docs' / 'cli.md'}")

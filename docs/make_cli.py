"""Write docs/cli.md, the command reference, from the code: every command's help and options as
`colddiff COMMAND --help` has them; and the table of training defaults in docs/training.md, from
TrainConfig and each method's own settings (tests/test_docs.py fails when either is stale).

    python docs/make_cli.py          # rewrite docs/cli.md and the table in docs/training.md
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


BEGIN, END = "<!-- defaults: written by docs/make_cli.py -->", "<!-- end of defaults -->"


def training_defaults() -> str:
    """| option | cold diffusion | blurdiff | what it does | of every training setting, from the code."""
    import dataclasses

    import typer.main

    import colddiff
    import operators
    import train
    from train_config import TrainConfig

    options = {p.name: p for p in typer.main.get_command(colddiff.app).commands["train"].params}
    blurdiff = operators.make_operator("blurdiff").train_defaults
    rows = [("net", f"`{train.NET_DEFAULT}` (cifar10 presets: `{train.PRESET_NETS['cifar10']}`)", blurdiff.get("net"))]
    rows += [(f.name, f.default, blurdiff.get(f.name)) for f in dataclasses.fields(TrainConfig) if f.name in options]
    lines = [BEGIN, "| option | cold diffusion | blurdiff | what it does |", "|---|---|---|---|"]
    for name, cold, lee in rows:
        p = options[name]
        flag = p.opts[0] if not p.secondary_opts or cold is not False else p.secondary_opts[0]
        shown = cold if isinstance(cold, str) and cold.startswith("`") else f"`{cold}`"
        lines.append(f"| `{flag}` | {shown} | {'' if lee is None else f'`{lee}`'} | {(p.help or '').replace('|', chr(92) + '|')} |")
    return "\n".join([*lines, END])


def with_defaults(text: str) -> str:
    """docs/training.md's text with its table of defaults made anew."""
    head, rest = text.split(BEGIN)
    return head + training_defaults() + rest.split(END, 1)[1]


if __name__ == "__main__":
    (ROOT / "docs" / "cli.md").write_text(reference())
    page = ROOT / "docs" / "training.md"
    page.write_text(with_defaults(page.read_text()))
    print(f"wrote {ROOT / 'docs' / 'cli.md'} and the defaults in {page}")

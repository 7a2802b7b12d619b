"""The operator is the unit of a method: no operator names outside operators.py, a new operator is
one class, every user error is one line, random operators never draw silently."""
import re

import pytest
import torch
from conftest import ALL, ROOT, make, rand_images, run_cli

import operators as O
from errors import UserError
from seeding import ImageRNG

SWITCH = re.compile(r"""op\.name ==|op\.name in|objective ==|\.name == "|op_name == "|sampler == "|sampler"\) == "|== "direct"|getattr\(op, ["']""")


def test_no_operator_or_sampler_switches_outside_their_files():
    """What differs between operators or samplers is their attribute, never a test of their name
    elsewhere (a new operator or sampler would have to be added to every such test)."""
    own = {p for p in ROOT.glob("*.py") if re.search(r"^@register$", p.read_text(), re.M)} | {ROOT / "operator_base.py", ROOT / "operators.py"}
    files = [p for p in [*ROOT.glob("*.py"), *ROOT.glob("benchmarks/*.py")] if p not in own]
    hits = [f"{p.name}:{i}: {line.strip()}" for p in files for i, line in enumerate(p.read_text().splitlines(), 1) if SWITCH.search(line)]
    assert len(files) >= 10 and hits == []


def test_the_switch_pattern_catches_the_switches_it_names():
    for line in ('if op.name == "blur":', 'reverse = op_name == "blurdiff"', 'if self.sampler == "direct":',
                 'note.get("sampler") == "direct"', 'bool(getattr(op, "flat_last", False))'):
        assert SWITCH.search(line), line


@pytest.mark.parametrize("name,preset", ALL)
def test_random_operators_refuse_to_apply_without_their_hidden_randomness(name, preset):
    op = make(name, preset)
    x = rand_images(2, 3, 16, 16)
    t = torch.full((2,), op.T)
    if op.draw(x, torch.Generator().manual_seed(0)) is None:
        assert torch.equal(op.apply(x, t), op.degrade(x, t))
    else:
        with pytest.raises(TypeError, match="hidden"):
            op.apply(x, t)


def test_image_rng_draws_per_image_whatever_the_batch():
    op = make("snow")
    x = rand_images(4, 3, 16, 16)
    whole = ImageRNG.numbered(7, 0, 4).draw(op, x)
    tail = ImageRNG.numbered(7, 2, 2).draw(op, x[2:])
    assert torch.equal(whole["layer"][2:], tail["layer"]) and torch.equal(whole["vertical"][2:], tail["vertical"])
    assert not torch.equal(whole["layer"][0], whole["layer"][1])
    # one seed for every image: what `restore --seed S` redraws for each of its inputs
    same = ImageRNG([5, 5]).draw(op, x[:2])
    assert torch.equal(same["layer"][0], same["layer"][1])


FADE = '''"""A toy generative operator in a file of its own: x_t fades linearly into a flat grey c."""
from dataclasses import dataclass

import torch

from operator_base import Operator, register


@register
@dataclass
class Fade(Operator):
    name = "fade"
    DEFAULT_PRESET = "default"
    generation = "a random flat grey"
    T: int = 4

    def draw(self, x0, generator=None):
        c = torch.rand(x0.shape[0], 1, 1, 1, generator=generator) - 0.5
        return {"c": c.to(x0.device)}

    def apply(self, x0, t, hidden=None):
        t = self.check_t(x0, t)
        w = (t.float() / self.T).view(-1, 1, 1, 1)
        return ((1 - w) * x0.float() + w * self.needs(hidden)["c"]).to(x0.dtype)


Fade.PRESETS = {"default": dict(T=4)}
'''


def test_a_new_operator_is_one_file_and_one_registry_line(fmnist_split, tmp_path):
    """A copy of colddiff with fade.py beside its modules and one import line added to operators.py:
    train, generate, degrade and restore take --op fade, and the samplers that do not fit it refuse it."""
    import shutil

    code = tmp_path / "code"
    code.mkdir()
    for p in PROJECT:
        shutil.copy(p, code / p.name)
    (code / "fade.py").write_text(FADE)
    registry = (code / "operators.py").read_text()
    line = "import snow  # noqa: F401  snow (ImageNet-C)\n"
    assert line in registry
    (code / "operators.py").write_text(registry.replace(line, line + "import fade  # noqa: F401\n"))
    run = lambda *args: run_cli(*args, cwd=tmp_path, env={"PYTHONPATH": str(code)})  # noqa: E731
    model = tmp_path / "fade.safetensors"
    r = run("train", fmnist_split[0], "-o", model, "--op", "fade", "--net", "tiny", "--steps", "4", "--batch", "4",
            "--accumulate", "1", "--save-every", "4", "--sample-every", "4", "--no-augment")
    assert r.returncode == 0, r.stderr.decode()
    r = run("generate", "--model", model, "--n", "3", "-o", tmp_path / "g.png")
    assert r.returncode == 0 and (tmp_path / "g.png").stat().st_size > 0, r.stderr.decode()
    img = sorted(fmnist_split[1].iterdir())[0]
    r = run("degrade", img, "--op", "fade", "--t", "2", "--seed", "3", "-o", tmp_path / "d.png")
    assert r.returncode == 0, r.stderr.decode()
    r = run("restore", tmp_path / "d.png", "--model", model, "-o", tmp_path / "r.png")
    assert r.returncode == 0 and (tmp_path / "r.png").exists(), r.stderr.decode()
    r = run("restore", tmp_path / "d.png", "--model", model, "--sampler", "reverse", "-o", tmp_path / "x.png")
    assert r.returncode == 1 and b"fade samples with direct or naive or tacos, not reverse" in r.stderr


# ----------------------------------------------------------------------------- bad input: one line, exit 1


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory, blur_model):
    """A foreign .safetensors (no colddiff metadata), a truncated model, a model trained at 9 px."""
    from conftest import invoke
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("bad")
    save_file({"w": torch.zeros(3)}, str(d / "foreign.safetensors"))
    data = blur_model.read_bytes()
    (d / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    small = d / "small"
    small.mkdir()
    from PIL import Image

    for i in range(3):
        Image.new("L", (9, 9), color=40 * i).save(small / f"{i}.png")
    r = invoke("train", small, "-o", d / "nine.safetensors", "--net", "tiny", "--steps", "1", "--batch", "2", "--accumulate", "1", "--no-augment")
    assert r.returncode == 0, r.stderr.decode()
    return d


def one_error_line(r):
    lines = r.stderr.decode().splitlines()
    return r.returncode == 1 and len(lines) == 1 and lines[0].startswith("colddiff: error: ")


@pytest.mark.parametrize("case", ["foreign", "truncated"])
@pytest.mark.parametrize("command", ["restore", "eval", "generate", "fit-prior"])
def test_every_model_command_rejects_files_that_are_not_models(cli, bad_models, fmnist_split, case, command, tmp_path):
    model = bad_models / f"{case}.safetensors"
    img = sorted(fmnist_split[1].iterdir())[0]
    args = {"restore": [img], "eval": [fmnist_split[1]], "generate": [], "fit-prior": [fmnist_split[0], "-o", tmp_path / "m.safetensors"]}
    r = cli(command, *args[command], "--model", model, *(["-o", tmp_path / "o.png"] if command in ("restore", "generate") else []))
    assert one_error_line(r), r.stderr.decode()


def test_bad_inputs_each_give_one_error_line(cli, bad_models, blur_model, fmnist_split, tmp_path):
    few = tmp_path / "few"
    few.mkdir()
    for f in sorted(fmnist_split[0].iterdir())[:2]:
        (few / f.name).write_bytes(f.read_bytes())
    cases = [
        ("train", few, "-o", tmp_path / "g.safetensors", "--op", "blur", "--preset", "generation", "--gmm-components", "5",
         "--net", "tiny", "--steps", "1"),
        ("eval", bad_models / "small", "--model", bad_models / "nine.safetensors"),
        ("train", few, "-o", tmp_path / "m.safetensors", "--net", "huge"),
        ("train", few, "-o", tmp_path / "m.safetensors", "--lr", "0"),
        ("restore", few, "--model", blur_model, "--z", "sideways", "-o", tmp_path / "r"),
        ("degrade", few, "--op", "blur", "--param", "T=0", "-o", tmp_path / "d"),
        ("eval", few, "--model", tmp_path / "missing.safetensors"),
    ]
    for args in cases:
        r = cli(*args)
        assert one_error_line(r), (args, r.stderr.decode())
    assert not (tmp_path / "g.safetensors").exists() and not (tmp_path / "r").exists() and not (tmp_path / "d").exists()
    assert "--gmm-components) needs at least 5 images, got 2" in cli(*cases[0]).stderr.decode()
    assert "at least 11x11" in cli(*cases[1]).stderr.decode()


def test_user_error_is_the_only_error_class():
    import checkpoint
    import errors
    import image_io
    import outputs
    import samplers

    for module in (O, samplers, checkpoint, image_io, outputs):
        own = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, Exception) and v.__module__ == module.__name__]
        assert own == [], (module.__name__, own)
    assert issubclass(errors.UserError, Exception)
    with pytest.raises(UserError):
        O.make_operator("nope")


# ----------------------------------------------------------------------------- the house: sizes, imports, modules

PROJECT = sorted(p for p in ROOT.glob("*.py"))
CHECKED = PROJECT + sorted(ROOT.glob("benchmarks/*.py"))
COMMAND_LINES, FUNCTION_LINES = 40, 60


def body_lines(fn) -> int:
    """Lines of a function's body, its signature and docstring aside (blank lines and comments count:
    they are what a reader reads)."""
    import ast

    body = fn.body[1:] if fn.body and isinstance(fn.body[0], ast.Expr) and isinstance(getattr(fn.body[0], "value", None), ast.Constant) \
        and isinstance(fn.body[0].value.value, str) else fn.body
    return body[-1].end_lineno - body[0].lineno + 1 if body else 0


def functions(path):
    import ast

    tree = ast.parse(path.read_text())
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def is_command(fn) -> bool:
    return any("command" in ast_name(d) for d in fn.decorator_list)


def ast_name(node) -> str:
    import ast

    return ast.unparse(node)


def test_every_command_reads_as_a_few_labelled_steps():
    """A command body is parse, plan the inputs, open the model, run, write: the work lives in the modules."""
    long = [f"{fn.name}: {body_lines(fn)} lines" for fn in functions(ROOT / "colddiff.py") if is_command(fn) and body_lines(fn) > COMMAND_LINES]
    assert len([fn for fn in functions(ROOT / "colddiff.py") if is_command(fn)]) >= 8
    assert long == [], f"commands over {COMMAND_LINES} lines: {long}"


def test_no_function_is_longer_than_a_screen():
    long = [f"{p.relative_to(ROOT)}:{fn.lineno} {fn.name}: {body_lines(fn)} lines" for p in CHECKED for fn in functions(p)
            if body_lines(fn) > FUNCTION_LINES]
    assert long == [], f"functions over {FUNCTION_LINES} lines: {long}"


def imports_of(path, modules: set) -> set:
    """The project modules `path` imports, at its top or inside a function (a lazy import is an edge too)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & modules - {path.stem}


def cycles(graph: dict) -> list:
    """Every import circle of `graph` (module -> modules it imports), each once, as a list of its modules."""
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_the_project_modules_import_each_other_without_a_circle():
    modules = {p.stem for p in PROJECT}
    graph = {p.stem: imports_of(p, modules) for p in PROJECT}
    assert len(graph) >= 15 and graph["colddiff"]
    assert cycles(graph) == []


def test_cycles_finds_a_circle_through_a_lazy_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def py_modules() -> list:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["py-modules"]


def test_every_top_level_module_is_installed():
    """pip install . ships py-modules only: a module left out works from the checkout and fails installed."""
    assert sorted(py_modules()) == sorted(p.stem for p in PROJECT)


def test_every_operator_file_is_one_line_of_the_registry():
    """A file whose classes @register themselves is imported by operators.py (else its operators exist
    only where something else happens to import it), and every registered operator comes from one."""
    import re

    registering = {p.stem for p in PROJECT if re.search(r"^@register$", p.read_text(), re.M)}
    imported = imports_of(ROOT / "operators.py", {p.stem for p in PROJECT})
    assert registering and registering <= imported, registering - imported
    assert {cls.__module__ for cls in O.OPERATORS.values()} == registering


def test_the_registry_lists_the_operators_in_the_order_of_its_import_lines():
    """operators.py's import lines decide `colddiff ops`'s order (an import sorter must not reorder them)."""
    import re

    files = re.findall(r"^import (\w+)  # noqa: F401", (ROOT / "operators.py").read_text(), re.M)
    by_file = [name for f in files for name, cls in O.OPERATORS.items() if cls.__module__ == f]
    assert files[0] == "cold" and list(O.OPERATORS) == by_file

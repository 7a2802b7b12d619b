"""The operator is the unit of a method: no operator names outside operators.py, a new operator is
one class, every user error is one line, random operators never draw silently."""
import re
from dataclasses import dataclass

import pytest
import torch

import operators as O
from common import ImageRNG, UserError
from conftest import ALL, ROOT, make, rand_images


def test_no_operator_switches_outside_operators_py():
    pattern = re.compile(r"op\.name ==|op\.name in|objective ==|\.name == \"")
    files = [p for p in [*ROOT.glob("*.py"), *ROOT.glob("benchmarks/*.py")] if p.name != "operators.py"]
    hits = [f"{p.name}:{i}: {line.strip()}" for p in files for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert len(files) >= 10 and hits == []


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


@dataclass
class Fade(O.Operator):
    """A toy generative operator, defined here only: x_t fades linearly into a flat grey c."""

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


def test_a_new_operator_is_one_class_train_generate_restore(cli, monkeypatch, fmnist_split, tmp_path):
    monkeypatch.setitem(O.OPERATORS, "fade", Fade)
    model = tmp_path / "fade.safetensors"
    r = cli("train", fmnist_split[0], "-o", model, "--op", "fade", "--net", "tiny", "--steps", "4", "--batch", "4",
            "--accumulate", "1", "--save-every", "4", "--sample-every", "4", "--no-augment")
    assert r.returncode == 0, r.stderr.decode()
    r = cli("generate", "--model", model, "--n", "3", "-o", tmp_path / "g.png")
    assert r.returncode == 0, r.stderr.decode()
    assert (tmp_path / "g.png").stat().st_size > 0
    img = sorted(fmnist_split[1].iterdir())[0]
    r = cli("degrade", img, "--op", "fade", "--t", "2", "--seed", "3", "-o", tmp_path / "d.png")
    assert r.returncode == 0, r.stderr.decode()
    r = cli("restore", tmp_path / "d.png", "--model", model, "--t", "2", "--seed", "3", "-o", tmp_path / "r.png")
    assert r.returncode == 0, r.stderr.decode()
    r = cli("restore", tmp_path / "d.png", "--model", model, "--sampler", "reverse", "-o", tmp_path / "x.png")
    assert r.returncode == 1 and b"fade samples with direct or naive or tacos, not reverse" in r.stderr


# ----------------------------------------------------------------------------- bad input: one line, exit 1


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory, blur_model):
    """A foreign .safetensors (no colddiff metadata), a truncated model, a model trained at 9 px."""
    from safetensors.torch import save_file

    from conftest import invoke

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
    import common
    import image_io
    import outputs
    import samplers

    for module in (O, samplers, checkpoint, image_io, outputs):
        own = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, Exception) and v.__module__ == module.__name__]
        assert own == [], (module.__name__, own)
    assert issubclass(common.UserError, Exception)
    with pytest.raises(UserError):
        O.make_operator("nope")

import argparse
import json
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import reproduce  # noqa: E402


def test_write_results_replaces_only_the_generated_section(tmp_path):
    md = tmp_path / "RESULTS.md"
    (b, e), (b2, e2) = reproduce.markers(), reproduce.markers("long")
    md.write_text(f"# Results\n\nprose before\n\n{b}\nold table\n{e}\n\nprose after\n\n{b2}\nlong run\n{e2}\n")
    reproduce.write_results(md, "new table")
    text = md.read_text()
    assert "old table" not in text and "new table" in text and "long run" in text
    assert text.index("prose before") < text.index("new table") < text.index("prose after") < text.index("long run")
    reproduce.write_results(md, "longer run", "long")
    assert "long run" not in md.read_text() and "new table" in md.read_text()
    fresh = tmp_path / "NEW.md"
    reproduce.write_results(fresh, "first")
    assert b + "\nfirst\n" + e in fresh.read_text()


def test_every_model_trains_with_one_ema_and_the_cpu_budget_is_not_warned_of():
    """blurdiff's EMA is not the cold models': reproduce gives them all one, fit for its budgets."""
    import train

    for steps, mode in ((1000, "train"), (20000, "train"), (2000, "study"), (20000, "study")):
        a = argparse.Namespace(net="tiny", size=32, steps=steps, batch=32, accumulate=1, lr=2e-3, lr_schedule="constant", ema=mode)
        args = [str(x) for x in reproduce.train_args(a)]
        ema = {k: float(args[args.index(k) + 1]) for k in ("--ema-decay", "--ema-every", "--ema-start")}
        cfg = train.TrainConfig(steps=steps, ema_decay=ema["--ema-decay"], ema_every=int(ema["--ema-every"]),
                                ema_start=int(ema["--ema-start"]))
        assert train.ema_warning(cfg) is None
        if mode == "study":  # the generator study's EMA: every step from a fifth of the run
            assert (ema["--ema-decay"], ema["--ema-every"], ema["--ema-start"]) == (0.999, 1, steps // 5)
        else:
            assert (ema["--ema-decay"], ema["--ema-every"], ema["--ema-start"]) == (
                train.TrainConfig.ema_decay, train.TrainConfig.ema_every, train.TrainConfig.ema_start)


def test_reproduce_end_to_end_tables_come_from_the_runs(fmnist_split, tmp_path):
    """A tiny budget through every stage: the report's numbers are those eval and generation wrote."""
    data = fmnist_split[0].parent
    out, md = tmp_path / "out", tmp_path / "RESULTS.md"
    args = ["--data", data, "--out", out, "--results", tmp_path / "grids", "--results-md", md, "--only", "blur,blur-gen",
            "--net", "tiny", "--steps", "2", "--batch", "4", "--n", "6", "--gen-n", "8", "--gen-steps", "3", "--classifier-epochs", "1"]
    reproduce.main([str(a) for a in args])
    log = json.loads((out / "results.json").read_text())
    table = json.loads((out / "eval" / "blur" / "eval.json").read_text())
    text = md.read_text()
    assert table["n"] == 6 and f"| {table['degraded']['ssim']:.3f} | {table['degraded']['rmse']:.3f} |" in text
    assert set(log["generation"]) == {"floor", "blur, broken symmetry", "blur, released nudge of x_T", "blur, perfect symmetry"}
    for variant in ("blur, broken symmetry", "blur, perfect symmetry"):
        g = log["generation"][variant]
        assert g["n"] == 8 and f"| {variant} | 8 | 3 | {g['fcd']:.2f} | {g['diversity']:.3f} |" in text
        assert (tmp_path / "grids" / g["grid"]).stat().st_size > 100
    assert (tmp_path / "grids" / "restore_blur.png").exists()
    d, se = table["sampled_minus_direct"]["ssim"], table["sampled_minus_direct"]["ssim_se"]
    verdict = {"higher": "beats", "lower": "trails", "no difference measured": "ties with"}[reproduce.metrics.paired_verdict(d, se)]
    assert f"- blur: Algorithm 2 {verdict} direct restoration: {d:+.3f} SSIM (2 standard errors {2 * se:.3f};" in text
    broken, perfect = (log["generation"][v]["fcd"] for v in ("blur, broken symmetry", "blur, perfect symmetry"))
    verdict = ("no difference measured" if abs(broken - perfect) <= reproduce.FCD_SAME * max(broken, perfect)
               else "helps here" if broken < perfect else "does not help here")
    assert f"- breaking symmetry: FCD {broken:.2f} (blur, broken symmetry) vs {perfect:.2f} (blur, perfect symmetry): {verdict};" in text
    # A second run finds everything done: nothing retrained, the same numbers.
    before = (out / "models" / "blur.safetensors").stat().st_mtime_ns
    reproduce.main([str(a) for a in args])
    assert (out / "models" / "blur.safetensors").stat().st_mtime_ns == before
    assert json.loads((out / "results.json").read_text())["eval"] == log["eval"]
    # A longer budget and one more experiment, trained two at a time: the retrained models are scored
    # again, by the same classifier (same floor), and the new model's variants join the table.
    clf = (out / "classifier.safetensors").stat().st_mtime_ns
    evaluated = (out / "eval" / "blur" / "eval.json").stat().st_mtime_ns
    args[args.index("--steps") + 1] = "3"
    args[args.index("--only") + 1] = "blur,blur-gen,noise"
    reproduce.main([str(a) for a in args + ["--parallel", "2"]])
    longer = json.loads((out / "results.json").read_text())
    for name in ("blur", "blur-gen", "noise"):  # resumed or new, each on its own thread, its log beside it
        assert reproduce.checkpoint.load_model(str(out / "models" / f"{name}.safetensors"), "cpu")[2]["step"] == 3
        assert "training: done" in (out / "models" / f"{name}.log").read_text()
    assert (out / "classifier.safetensors").stat().st_mtime_ns == clf
    assert longer["generation"]["floor"] == log["generation"]["floor"]
    assert {"noise, estimated z", "noise, fixed z", "blur, broken symmetry"} <= set(longer["generation"])
    assert longer["train"]["blur"]["seconds"] > log["train"]["blur"]["seconds"]
    assert "--resume" not in longer["train"]["blur"]["command"] and "--steps 3" in longer["train"]["blur"]["command"]
    assert (out / "eval" / "blur" / "eval.json").stat().st_mtime_ns != evaluated
    table = json.loads((out / "eval" / "blur" / "eval.json").read_text())
    assert longer["eval"]["blur"]["table"] == table and f"| {table['sampled']['ssim']:.3f} |" in md.read_text()


def test_deadline_starts_no_stage_after_it_and_still_reports(fmnist_split, tmp_path, capsys):
    """--deadline 0: nothing is trained, scored or generated, and the report says what there is (nothing)."""
    out, md = tmp_path / "out", tmp_path / "RESULTS.md"
    args = ["--data", fmnist_split[0].parent, "--out", out, "--results", tmp_path / "grids", "--results-md", md, "--only", "blur,blur-gen",
            "--net", "tiny", "--steps", "2", "--batch", "4", "--no-compile", "--deadline", "0"]
    reproduce.main([str(a) for a in args])
    assert "--deadline reached, training blur left out" in capsys.readouterr().err
    assert not (out / "models").exists() and reproduce.markers()[0] in md.read_text()
    assert "### Restoration" not in md.read_text()  # no table without rows
    log = json.loads((out / "results.json").read_text())
    assert log["train"] == {} and log["eval"] == {} and log["generation"] == {}
    a = argparse.Namespace(net="tiny", size=32, steps=2, batch=4, accumulate=1, lr=1e-3, lr_schedule="constant", compile=False, ema="train")
    assert "--no-compile" in [str(x) for x in reproduce.train_args(a)]
    assert "--no-augment" not in [str(x) for x in reproduce.train_args(a)]
    a.augment = False  # the generator study's finding: the papers' augmentation alone puts real images at FCD 74-81
    assert "--no-augment" in [str(x) for x in reproduce.train_args(a)]


def test_each_generation_variant_samples_as_its_row_says():
    """Lee et al.'s released sampler takes all T steps on --blurdiff-n images; cold samplers jump --gen-steps
    (all T without it); a `steps=K` row is colddiff's own default sampler at K steps on --gen-n images."""
    a = argparse.Namespace(gen_n=500, blurdiff_n=200, gen_steps=50)
    blurdiff, blur = reproduce.operators.make_operator("blurdiff", "quartic"), reproduce.operators.make_operator("blur", "generation")
    assert reproduce.sampling(a, blurdiff, "") == (200, 1000, [f"sampler={blurdiff.released_sampler}"])
    assert not reproduce.SAMPLERS[blurdiff.released_sampler].steps and blurdiff.default_sampler == "dpmpp_2m"  # the rows' name
    assert reproduce.sampling(a, blurdiff, "steps=20") == (500, 20, ["steps=20"])
    assert reproduce.sampling(a, blur, "perfect") == (500, 50, ["perfect", "steps=50"])
    a.gen_steps = None
    assert reproduce.sampling(a, blur, "") == (500, None, [])
    rows = {variant: (model, option) for variant, model, option, _ in reproduce.VARIANTS}
    assert rows["blurdiff quartic, DPM-Solver++(2M)"] == ("blurdiff", "steps=20") and rows["DDPM, DPM-Solver++(2M)"] == ("ddpm", "steps=20")

"""benchmarks/train.py runs on the CPU and prints what issue #42 reads off it: img/s and GFLOP/s of each
variant, and this machine's own matmul rate measured right after each row with the row's share of it."""
import subprocess
import sys

from conftest import ROOT


def test_train_benchmark_prints_both_variants_and_the_matmul_rate():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train.py"), "--device", "cpu", "--net", "tiny", "--batch", "4",
                        "--cases", "noise", "--threads", "1", "--variants", "before,after", "--steps", "2", "--warmup", "1"],
                       capture_output=True, timeout=300)
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| noise noise T=200")]
    assert [row[0].rsplit(", ", 1)[1] for row in rows] == ["before", "after"]
    for row in rows:  # GFLOP/img is printed to 2 decimals: 0.36 stands for 0.355-0.365
        rate, gflop, gflops = float(row[3].replace(",", "")), float(row[4]), float(row[5].replace(",", ""))
        matmul, share = float(row[6].replace(",", "")), row[7]  # each row's own matmul rate, measured right after it
        assert matmul > 0 and abs(rate * gflop - gflops) <= 0.02 * gflops + 0.1 and abs(int(share.rstrip("%")) - 100 * gflops / matmul) <= 1


def test_train_benchmark_times_the_network_that_net_param_describes():
    """--net-param overrides the preset as colddiff train's does: the FLOPs per image are the
    overridden network's, not the preset's."""
    sys.path.insert(0, str(ROOT))
    import unet

    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train.py"), "--device", "cpu", "--net", "tiny", "--net-param", "dim=32",
                        "--batch", "2", "--cases", "noise", "--threads", "1", "--steps", "1", "--warmup", "1"], capture_output=True, timeout=300)
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert "net=tiny dim=32," in out
    gflop = float(next(line for line in out.splitlines() if line.startswith("| noise noise T=200")).split(" | ")[4])
    want, preset = (3 * unet.forward_flops(unet.build(1, "tiny", **kw).config, 28, 28) / 1e9 for kw in ({"dim": 32}, {}))
    assert abs(gflop - want) <= 0.006 and abs(gflop - preset) > 0.1


def test_train_benchmark_times_several_networks_alternately_in_one_run():
    """--net A,B: a row per network and round, in turn, each with its own FLOPs and its own matmul rate."""
    sys.path.insert(0, str(ROOT))
    import unet

    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train.py"), "--device", "cpu", "--net", "tiny,adm-small", "--rounds", "2",
                        "--batch", "2", "--cases", "noise", "--threads", "1", "--steps", "1", "--warmup", "1"], capture_output=True, timeout=300)
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| noise noise T=200")]
    assert [row[0].rsplit(", ", 1)[1] for row in rows] == ["tiny", "adm-small"] * 2
    for row in rows:
        want = 3 * unet.forward_flops(unet.build(1, row[0].rsplit(", ", 1)[1]).config, 28, 28) / 1e9
        assert abs(float(row[4]) - want) <= 0.006
    both = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train.py"), "--device", "cpu", "--net", "tiny,adm-small",
                           "--net-param", "dim=8", "--cases", "noise"], capture_output=True, timeout=300)
    assert both.returncode == 2 and b"--net-param overrides one --net preset" in both.stderr


def test_train_benchmark_compares_bf16_with_fp32_against_both_matmul_rates():
    """--precision fp32,bf16: the rows alternate; a bf16 row is read against the fp32 and the bf16 matmul,
    each measured right after it; an fp32 row against the fp32 matmul alone."""
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train.py"), "--device", "cpu", "--net", "tiny", "--precision", "fp32,bf16",
                        "--batch", "2", "--cases", "noise", "--threads", "1", "--steps", "1", "--warmup", "1"], capture_output=True, timeout=300)
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| noise noise T=200")]
    assert [row[0].rsplit(", ", 1)[1] for row in rows] == ["fp32", "bf16"]
    (fp32, bf16) = rows
    assert fp32[8:10] == ["n/a", "n/a"]
    for row in rows:
        gflops = float(row[5].replace(",", ""))
        for rate, share in ([row[6], row[7]], [row[8], row[9]]) if row is bf16 else ([row[6], row[7]],):
            assert abs(int(share.rstrip("%")) - 100 * gflops / float(rate.replace(",", ""))) <= 1


def test_train_bench_takes_the_options_gpu_and_bundled_pass():
    """benchmarks/gpu.py and bundled.py call bench() with their own few options; the rest are bench's defaults
    (a --net-param read unguarded once broke both)."""
    import argparse

    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu import train_bench

    args = argparse.Namespace(net="tiny", batch=2, steps=1, warmup=1, augment=False, no_compile=False, peak_tflops=989.0)
    r = train_bench.bench("bundled", args, torch.device("cpu"))
    assert r["case"] == "bundled blur T=300" and r["rate"] > 0 and r["matmul"] > 0 and r["matmul_bf16"] is None


def test_generation_class_balance_against_a_per_image_reference():
    """generation.py --classes: images per predicted class, the mean top probability and the
    feature means' part of the FCD, each against a slow per-image computation."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import generation

    torch.manual_seed(0)
    clf = generation.Classifier(28).eval()
    images, ref_images = torch.rand(37, 1, 28, 28) * 2 - 1, torch.rand(23, 1, 28, 28) * 2 - 1
    ref = generation.features(clf, ref_images)
    counts, top, mean_term = generation.class_balance(clf, images, ref)
    with torch.no_grad():
        probs = [clf(x[None]).softmax(1)[0] for x in images]
        feats = torch.stack([clf.features(x[None])[0] for x in images])
    want = [sum(int(p.argmax()) == c for p in probs) for c in range(10)]
    assert counts == want and sum(counts) == 37
    assert abs(top - sum(float(p.max()) for p in probs) / 37) < 1e-5
    assert abs(mean_term - sum(float(v) ** 2 for v in feats.mean(0) - ref.mean(0))) < 1e-4 * max(1.0, mean_term)
    assert generation.class_balance(clf, ref_images, ref)[2] < 1e-8  # a set against itself: no distance in the means


def test_generation_scores_a_model_against_both_reference_rows(fmnist_split, gen_model):
    """generation.py end to end: the floor (train against test), the train split as --augment shows it
    to the network (farther from the test split than the plain train split: garments face one way), and
    the model's row, each an FCD and diversity."""
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "generation.py"), "--train", str(fmnist_split[0]), "--test",
                        str(fmnist_split[1]), "--model", f"{gen_model}:steps=5", "--n", "50", "--epochs", "3", "--device", "cpu"],
                       capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in r.stdout.decode().splitlines() if line.startswith("| ")}
    floor, augmented = (float(rows[k][1]) for k in ("test split vs train split (floor)", "train split with --augment (resize 1.12x, crop, flip)"))
    model = float(rows[f"{gen_model}:steps=5"][1])
    assert 0 < floor < augmented and model > floor

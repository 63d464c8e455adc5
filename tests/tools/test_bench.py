"""The benchmark commands: training-step throughput, the parameter / FLOPs profile per variant, the image check."""
import argparse
import re

import pytest
import torchvision

from recondec.tools.benchmark import BenchRow, format_table, mean_of_runs

from ..conftest import TINY
from ..helpers import load_script

bench = load_script("bench")

BENCH_TINY = [*TINY, "trainer.device=cpu"]


def table_rows(text: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}


def test_format_table_compares_step_time_with_the_flops_ratio():
    rows = [BenchRow("baseline", 100.0, 1.0, 0.3, 0.30), BenchRow("fair", 50.0, 2.0, 0.3, 0.30),
            BenchRow("slow", 40.0, 2.0, 0.24, 0.24)]
    table = table_rows(format_table(rows))
    assert table["fair"][2:5] == ["2.00", "2.00", "yes"]  # twice the FLOPs, twice the step time
    assert table["slow"][2:5] == ["2.00", "2.50", "NO"]   # more than the FLOPs ratio + 10%
    assert table["slow"][6] == "24.0%"


def test_the_job_loop_and_compiled_columns_show_their_share_of_the_bare_step():
    rows = [BenchRow("baseline", 100.0, 1.0, 0.3, None, 95.0, 100.0, 150.0),
            BenchRow("v", 50.0, 2.0, 0.3, None, 40.0, 50.0, 50.0)]
    table = table_rows(format_table(rows))
    assert table["baseline"][7:] == ["95.0", "95%", "100.0", "150.0", "1.50x"]
    assert table["v"][7:] == ["40.0", "80%", "50.0", "50.0", "1.00x"]
    assert "job loop img/s" not in format_table([BenchRow("baseline", 100.0, 1.0, 0.3, None)])


@pytest.mark.parametrize("configured", ["trainer.compile=false", "trainer.compile=true"])
def test_the_compile_comparison_times_both_modes_whatever_the_config_says(monkeypatch, tmp_path, configured):
    """The main column is the configured step; --compile adds the other mode, each in its own column."""
    from recondec.tools import benchmark

    monkeypatch.setattr(benchmark, "step_img_per_s", lambda conf, s, w: (300.0 if conf.trainer.compile else 100.0, 1e9))
    cfg = bench.variant_configs(argparse.Namespace(variants="", overrides=[*BENCH_TINY, configured]), str(tmp_path))
    row = benchmark.bench_variant(cfg["baseline"], 1, 1, compiled=True)
    assert (row.eager_img_per_s, row.compiled_img_per_s) == (100.0, 300.0)
    assert row.img_per_s == (300.0 if configured.endswith("true") else 100.0)


def test_two_measurements_combine_as_the_mean_step_time():
    row = mean_of_runs(BenchRow("b", 100.0, 1.0, 0.3, 0.3), BenchRow("b", 300.0, 1.0, 0.9, 0.9))
    assert row.img_per_s == pytest.approx(150.0)  # 1/100 s and 1/300 s per image -> 1/150 s on average
    assert row.mfu == pytest.approx(0.45)


def test_train_benchmark_prints_every_variant_with_its_flops_ratio(capsys):
    bench.main(["train", "--steps", "2", "--warmup", "1", "--variants", "sae_first,swwae_all", *BENCH_TINY])
    out = capsys.readouterr().out
    table = table_rows(out)
    assert list(table) == ["baseline", "sae_first", "swwae_all"]
    assert all(float(cells[0]) > 0 for cells in table.values())
    assert table["baseline"][2] == "1.00"
    for variant in ("sae_first", "swwae_all"):  # the same mirrored decoder: about twice the baseline's FLOPs
        assert 1.5 < float(table[variant][2]) < 2.5
    assert re.search(r"baseline first / last: [\d.]+ / [\d.]+ img/s", out)


@pytest.mark.slow
def test_profile_counts_vgg16_parameters_and_flops_at_224(capsys):
    bench.main(["profile", "--variants", "sae_all,swwae_all", "backbone=vgg16"])
    table = table_rows(capsys.readouterr().out)
    expected = sum(p.numel() for p in torchvision.models.vgg16(num_classes=10).parameters())
    for variant in ("baseline", "sae_all", "swwae_all"):
        assert int(table[variant][0].replace(",", "")) == expected
    assert table["baseline"][1] == "0"
    assert table["sae_all"][1] == table["swwae_all"][1] != "0"  # same decoder, different unpooling
    assert float(table["baseline"][3]) == pytest.approx(30.95, rel=0.01)  # VGG-16: 15.5 G multiply-adds
    assert 1.9 < float(table["swwae_all"][4]) < 2.1  # the mirrored decoder costs about as much as the encoder


def test_profile_counts_resnet18_parameters_as_torchvision_and_its_mirrored_decoder(capsys):
    bench.main(["profile", "--variants", "sae_all,swwae_all", "backbone=resnet18", "backbone.image_size=64"])
    table = table_rows(capsys.readouterr().out)
    expected = sum(p.numel() for p in torchvision.models.resnet18(num_classes=10).parameters())
    assert int(table["baseline"][0].replace(",", "")) == expected
    assert table["sae_all"][1] == table["swwae_all"][1] != "0"  # same decoder, different unpooling
    assert 1.5 < float(table["swwae_all"][4]) < 2.5  # the mirrored decoder costs about what the encoder costs


def test_check_images_benchmark_measures_both_passes_and_extrapolates_to_imagenet(capsys, tmp_path):
    from ..data.conftest import good_tree

    # a tree of the tests' own (the synthetic one is written by a process pool, which cannot import a script by path)
    (tmp_path / "tree" / "val" / "fox" / "notes.jpg").parent.mkdir(parents=True)
    (tmp_path / "tree" / "val" / "fox" / "notes.jpg").write_text("not an image\n")
    bench.main(["check-images", "--images", str(good_tree(tmp_path / "tree", per_class=(4, 2))), "--workers", "1"])
    out = capsys.readouterr().out
    assert "19 files (1 bad)" in out  # 3 classes of 4 training and 2 validation images, and the text file
    assert re.search(r"first check \(every file decoded\): +\d+ files/s", out)
    assert re.search(r"cached \(listing, sizes, mtimes\): +\d+ files/s", out)
    assert re.search(r"ImageNet's 1,281,167 training files at these rates: first check [\d.]+ min, cached", out)

"""A loss-weight sweep's chosen scale is the best difference among the scales at which the decoder's gradient
reaches 2 % of the cross-entropy's, whatever a scale under that line scores."""
from recondec.tracking.dose_response import chosen_scales, dose_points, section
from recondec.tracking.runs import MEDIAN_SHARE, Stat

SEEDS = ["0", "1", "2"]


def row(top1: list[float], share: float | None = None) -> dict[str, Stat]:
    stats = {"test/top1": Stat(dict(zip(SEEDS, top1, strict=True)), {s: f"start{s}" for s in SEEDS})}
    if share is not None:
        stats[MEDIAN_SHARE] = Stat({s: share for s in SEEDS})
    return stats


def test_the_chosen_scale_is_the_best_difference_among_the_scales_that_reach_two_percent():
    table = {"baseline": row([80.0, 81.0, 79.0]),
             "swwae_all": row([84.0, 85.0, 83.0], 0.005),        # the best difference, but 0.5 % of the gradient
             "swwae_all@10": row([81.0, 82.1, 79.9], 0.03),
             "swwae_all@100": row([82.0, 83.2, 80.9], 0.2),      # the best among those at 2 % or more
             "swwae_all@1000": row([78.0, 79.1, 77.0], 0.9),
             "sae_first@10": row([83.0, 84.0, 82.0], 0.019),     # no scale reaches 2 %
             "sae_first@100": row([82.0, 83.0, 81.0])}           # no share logged
    points = dose_points(table, "test/top1")
    assert [(p.variant, p.scale) for p in points] == [("sae_first", 10), ("sae_first", 100), ("swwae_all", 1),
                                                      ("swwae_all", 10), ("swwae_all", 100), ("swwae_all", 1000)]
    assert chosen_scales(points) == {"sae_first": None, "swwae_all": 100.0}
    text = "\n".join(section(points))
    assert "**swwae_all**: chosen scale 100" in text and "**sae_first**: chosen scale none" in text
    chosen_lines = [line for line in text.splitlines() if line.endswith("| yes |")]
    assert len(chosen_lines) == 1 and chosen_lines[0].startswith("| swwae_all | 100 |")


def test_a_preregistered_scale_names_the_row_however_the_number_is_written():
    from recondec.tracking.comparisons import parse_entry

    assert parse_entry("swwae_all@10.0") == ("swwae_all@10", "baseline")
    assert parse_entry("swwae_all@1") == ("swwae_all", "baseline")  # scale 1 runs carry no tag: their row has no "@"
    assert parse_entry("sae_all@1.0 vs swwae_all@0.1") == ("sae_all", "swwae_all@0.1")
    assert parse_entry("swwae_all+unlabelled@1e2 vs swwae_all@100") == ("swwae_all+unlabelled@100", "swwae_all@100")


def test_a_pilot_on_validation_stays_off_the_results_page(tmp_path):
    import json

    from recondec.tracking.results_page import _reports

    for name, split in (("grid", "test"), ("grid_dose", "val")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.md").write_text(f"# {name}\n")
        (tmp_path / name / "comparisons.json").write_text(json.dumps({"split": split, "comparisons": []}))
    assert [p.name for p in _reports(tmp_path)] == ["grid"]

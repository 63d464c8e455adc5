"""src/report.py: an experiment that does not exist is a one-line error listing those that do, and --plan writes
the seeds a grid needs from a pilot's runs."""
from statistics import stdev

import pytest

from recondec.tracking.stats import sd_upper_bound, seeds_for_mde, seeds_for_power

from ..helpers import load_script
from .grids import PREREGISTERED, ROWS


def test_an_unknown_experiment_is_one_line_naming_the_experiments_there(preregistered_grid, capsys):
    uri, experiment = preregistered_grid
    with pytest.raises(SystemExit) as exit_:
        load_script("report").main(["nope", "--tracking-uri", uri])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "no MLflow experiment named 'nope'" in err and experiment in err


def test_the_plan_asks_for_the_seeds_the_upper_bound_of_the_pilots_spread_needs(preregistered_grid, tmp_path):
    uri, experiment = preregistered_grid
    load_script("report").main([experiment, "--plan", "--mde", "1.5", "--tracking-uri", uri, "--out", str(tmp_path)])
    lines = (tmp_path / "power_plan.md").read_text().splitlines()
    assert not (tmp_path / "report.md").exists()  # a plan, not a report
    d = [x - y for x, y in zip(ROWS["swwae_all"][1], ROWS["baseline"][1], strict=True)]
    m = len(PREREGISTERED["decoders"])  # swwae_all's family
    cells = next(line for line in lines if line.startswith("| swwae_all |")).strip("| ").split(" | ")
    assert cells == ["swwae_all", "4", f"{stdev(d):.2f}", f"{sd_upper_bound(stdev(d), 4):.2f}", str(m),
                     str(seeds_for_power(stdev(d), 1.5, 0.05 / m)), str(seeds_for_mde(stdev(d), 4, 0.05 / m, 1.5))]
    unpaired = next(line for line in lines if line.startswith("| swwae_first |"))
    assert unpaired.split(" | ")[1:3] == ["0", "-"]  # its runs do not pair with the baseline's: nothing to plan on


def test_a_dose_pilot_plans_for_the_family_the_grid_will_correct_in(preregistered_grid, tmp_path, capsys):
    """A dose curve's runs carry no pre-registration: --family-size says the grid's Holm family."""
    uri, experiment = preregistered_grid
    load_script("report").main([experiment, "--plan", "--mde", "1.5", "--family-size", "5", "--tracking-uri", uri,
                                "--out", str(tmp_path)])
    lines = (tmp_path / "power_plan.md").read_text().splitlines()
    d = [x - y for x, y in zip(ROWS["swwae_all"][1], ROWS["baseline"][1], strict=True)]
    cells = next(line for line in lines if line.startswith("| swwae_all |")).strip("| ").split(" | ")
    assert cells[4:] == ["5", str(seeds_for_power(stdev(d), 1.5, 0.05 / 5)),
                         str(seeds_for_mde(stdev(d), 4, 0.05 / 5, 1.5))]
    for bad in (["--family-size", "0", "--plan"], ["--family-size", "3"]):  # none, or without a plan
        with pytest.raises(SystemExit):
            load_script("report").main([experiment, *bad, "--tracking-uri", uri, "--out", str(tmp_path)])
    assert "--family-size takes a count of 1 or more" in capsys.readouterr().err

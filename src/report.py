"""Every row of one MLflow experiment against its baseline, on the test set: mean ± std over seeds, the paired (or
Welch's) difference in top-1 with its 95 % interval, Holm's p within the comparison's family (the preset's
pre-registered questions, then the exploratory rest), the minimum detectable effect, the equivalence test and the
verdict those numbers give; the diagnostics that say whether the unsupervised objective acted; for a loss-weight
sweep, the dose-response. A reconstruction study's experiment gets its table and figure instead.

    python src/report.py lowlabel_fmnist                      # an MLflow experiment -> reports/lowlabel_fmnist/
    python src/report.py finetune_fmnist --sweep multirun/2026-11-25/17-40-00-000000 --out reports/one_grid
    python src/report.py recon_fmnist                         # the reconstruction study's table and figure
    python src/report.py lowlabel_fmnist --plan               # the seeds a grid needs, from a pilot's runs
    python src/report.py --docs                               # docs/results.md from every reports/<experiment>/
    python src/report.py finetune_fmnist --import reports/finetune_fmnist/runs.jsonl   # a grid's earlier runs first

Every report also writes runs.jsonl, the runs it read: `--import` loads such a file into the tracking URI (runs it
already holds are skipped), so that a grid split across machines or sessions is reported as one. A grid run into a
new store from cached classifiers takes their runs alone: `--import-classifiers <the earlier report's runs.jsonl>`.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

from recondec.config import REPO_ROOT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", nargs="?", help="MLflow experiment name (logger.experiment of the runs)")
    default_uri = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{REPO_ROOT}/mlflow.db")
    parser.add_argument("--tracking-uri", default=default_uri,
                        help="default: $MLFLOW_TRACKING_URI, else the repository's mlflow.db (as the jobs)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default reports/<experiment>)")
    parser.add_argument("--sweep", default=None, help="only the runs of this multirun folder (their 'sweep' tag)")
    parser.add_argument("--import", dest="imports", type=Path, action="append", default=[], metavar="RUNS_JSONL",
                        help="first load this runs.jsonl (a report's; repeatable) into the experiment in the tracking "
                             "URI; runs already there are skipped")
    parser.add_argument("--import-classifiers", dest="classifier_imports", type=Path, action="append", default=[],
                        metavar="RUNS_JSONL",
                        help="first load only the classifier runs of this runs.jsonl (any experiment's report; "
                             "repeatable): a grid run into a new store from cached classifiers gets its "
                             "'classifier (start)' row")
    parser.add_argument("--plan", action="store_true",
                        help="instead of the report: the seeds a grid needs, planned from this pilot experiment's "
                             "runs (power_plan.md)")
    parser.add_argument("--mde", type=float, default=None,
                        help="with --plan: the true difference in points of top-1 to detect with 80%% power "
                             "(default: the preset's report.equivalence_margin, 1 point unless it says otherwise)")
    parser.add_argument("--family-size", type=int, default=None, metavar="M",
                        help="with --plan: the Holm family the grid's rows will be corrected in (default: each row's "
                             "family under the pilot's pre-registration, else every row against the baseline)")
    parser.add_argument("--docs", action="store_true",
                        help="write docs/results.md from every reports/<experiment>/ (after the experiment's report, "
                             "when one is named)")
    return parser


def report_experiment(args: argparse.Namespace) -> None:
    from recondec.tracking.carry import import_runs
    from recondec.tracking.report import latest_study_run, write_power_plan, write_recon_report, write_report
    from recondec.tracking.runs import require_experiment

    for path, classifiers_only in [(p, False) for p in args.imports] + [(p, True) for p in args.classifier_imports]:
        created, present = import_runs(args.tracking_uri, args.experiment, path, classifiers_only)
        what = "classifier runs" if classifiers_only else "runs"
        print(f"imported {created} {what} from {path} into {args.tracking_uri} ({present} were there already)")
    require_experiment(args.tracking_uri, args.experiment)
    out = args.out or REPO_ROOT / "reports" / args.experiment
    if args.plan:
        path = write_power_plan(args.tracking_uri, args.experiment, out, args.sweep, args.mde,
                                args.family_size)
        print(path.read_text())
        print(f"written {path}")
    elif latest_study_run(args.tracking_uri, args.experiment) is not None:
        print(write_recon_report(args.tracking_uri, args.experiment, out).read_text())
    else:
        path, run_id = write_report(args.tracking_uri, args.experiment, out, args.sweep)
        print(path.read_text())
        print(f"written to {out} and logged as MLflow run {run_id}")


def main(argv: Optional[list[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.experiment is None and not args.docs:
        parser.error("name an experiment, or give --docs")
    if (args.imports or args.classifier_imports) and args.experiment is None:
        parser.error("--import and --import-classifiers load runs into an experiment: name it")
    if args.family_size is not None and (args.family_size < 1 or not args.plan):
        parser.error("--family-size takes a count of 1 or more, and goes with --plan")
    from recondec.tracking.report import ReportError, write_results_page

    try:
        if args.experiment:
            report_experiment(args)
    except ReportError as e:  # what is stored cannot make this report: say why in one line, not a traceback
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    if args.docs:
        print(f"written {write_results_page(REPO_ROOT / 'reports', REPO_ROOT / 'docs' / 'results.md')}")


if __name__ == "__main__":
    main()

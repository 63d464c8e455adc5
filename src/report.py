"""Every row of one MLflow experiment against its baseline, on the test set: mean ± std over seeds, the paired (or
Welch's) difference in top-1 with its 95 % interval, Holm's p, the minimum detectable effect and the verdict those
numbers give; the diagnostics that say whether the unsupervised objective acted. A reconstruction study's
experiment gets its table and figure instead.

    python src/report.py lowlabel_fmnist                      # an MLflow experiment -> reports/lowlabel_fmnist/
    python src/report.py finetune_fmnist --sweep multirun/2026-11-25/17-40-00-000000 --out reports/one_grid
    python src/report.py recon_fmnist                         # the reconstruction study's table and figure
    python src/report.py --docs                               # docs/results.md from every reports/<experiment>/
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from recondec.config import REPO_ROOT  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", nargs="?", help="MLflow experiment name (logger.experiment of the runs)")
    default_uri = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{REPO_ROOT}/mlflow.db")
    parser.add_argument("--tracking-uri", default=default_uri,
                        help="default: $MLFLOW_TRACKING_URI, else the repository's mlflow.db (as the jobs)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default reports/<experiment>)")
    parser.add_argument("--sweep", default=None, help="only the runs of this multirun folder (their 'sweep' tag)")
    parser.add_argument("--docs", action="store_true",
                        help="write docs/results.md from every reports/<experiment>/ (after the experiment's report, "
                             "when one is named)")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.experiment is None and not args.docs:
        parser.error("name an experiment, or give --docs")
    from recondec.tracking.report import latest_study_run, write_recon_report, write_report, write_results_page

    if args.experiment:
        out = args.out or REPO_ROOT / "reports" / args.experiment
        if latest_study_run(args.tracking_uri, args.experiment) is not None:
            path = write_recon_report(args.tracking_uri, args.experiment, out)
            print(path.read_text())
        else:
            path, run_id = write_report(args.tracking_uri, args.experiment, out, args.sweep)
            print(path.read_text())
            print(f"written to {out} and logged as MLflow run {run_id}")
    if args.docs:
        page = write_results_page(REPO_ROOT / "reports", REPO_ROOT / "docs" / "results.md")
        print(f"written {page}")


if __name__ == "__main__":
    main()

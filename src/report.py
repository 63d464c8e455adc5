"""Every variant of one MLflow experiment against its baseline: mean ± std over seeds, the difference in top-1
with its 95 % confidence interval, Welch's and the paired t-test, and the verdict those numbers give.

    python src/report.py finetune_fmnist                      # an MLflow experiment name -> reports/finetune_fmnist/
    python src/report.py finetune_fmnist --sweep multirun/2026-11-25/17-40-00 --out reports/one_grid
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from recondec.config import REPO_ROOT  # noqa: E402
from recondec.tracking.report import write_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", help="MLflow experiment name (logger.experiment of the runs)")
    default_uri = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{REPO_ROOT}/mlflow.db")
    parser.add_argument("--tracking-uri", default=default_uri,
                        help="default: $MLFLOW_TRACKING_URI, else the repository's mlflow.db (as the jobs)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default reports/<experiment>)")
    parser.add_argument("--sweep", default=None, help="only the runs of this multirun folder (their 'sweep' tag)")
    args = parser.parse_args()
    out = args.out or REPO_ROOT / "reports" / args.experiment
    path, run_id = write_report(args.tracking_uri, args.experiment, out, args.sweep)
    print(path.read_text())
    print(f"written to {out} and logged as MLflow run {run_id}")


if __name__ == "__main__":
    main()

"""Paper-style comparison report of one MLflow experiment (mean ± std over seeds per variant).

    python src/report.py fashion_mnist_vgg16_small           # an MLflow experiment name
    python src/report.py joint_fmnist --out reports/joint     # writes report.md + plots, logs a summary run
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from recondec.config import REPO_ROOT  # noqa: E402
from recondec.tracking.report import write_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", help="MLflow experiment name (logger.experiment of the runs)")
    parser.add_argument("--tracking-uri", default=f"sqlite:///{REPO_ROOT}/mlflow.db")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default reports/<experiment>)")
    args = parser.parse_args()
    out = args.out or REPO_ROOT / "reports" / args.experiment
    path, run_id = write_report(args.tracking_uri, args.experiment, out)
    print(path.read_text())
    print(f"written to {out} and logged as MLflow run {run_id}")


if __name__ == "__main__":
    main()

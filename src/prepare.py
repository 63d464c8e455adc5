"""Write the .beton files of a data set for data.loader=ffcv: train.beton, val.beton (and test.beton where the tree
has test/) of an image folder; train.beton and test.beton of a built-in set.

    python src/prepare.py data=imagenet data.root=/datasets/imagenet   # <root>/train/<class>/*, <root>/val/...
    python src/prepare.py data=folder data.root=/data/x data.num_classes=10
    python src/prepare.py data=digits                                  # built-in sets (also written on first use)

Options (data.ffcv.*): max_resolution, write_mode (raw | jpg | proportion | smart), jpeg_quality,
compress_probability, num_workers, strict (stop at the first bad image), beton_dir (default
data/beton/<data.name>). Bad images are skipped and listed in <beton>.report.tsv; an up-to-date file is
skipped; a failure or Ctrl-C leaves no half-written file.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the recondec package lives next to this file

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from recondec.checks import validate  # noqa: E402
from recondec.config import refusing_bad_values, register_schema  # noqa: E402
from recondec.data.beton import write_dataset  # noqa: E402

register_schema()


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with refusing_bad_values():
        data = validate(cfg).data
        results = write_dataset(data)  # every split is listed and checked before the first file is written
    for result in results.values():
        print(result.summary())


if __name__ == "__main__":
    main()

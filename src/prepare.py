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
import hydra
from omegaconf import DictConfig

from recondec.checks import validate
from recondec.config import refusing_bad_values, register_schema
from recondec.data.beton import write_dataset

register_schema()


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(composed: DictConfig) -> None:
    with refusing_bad_values():
        data = validate(composed).data
        results = write_dataset(data)  # every split is listed and checked before the first file is written
    for result in results.values():
        print(result.summary())


if __name__ == "__main__":
    main()

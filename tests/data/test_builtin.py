"""Fashion-MNIST from Debian's files, or through torchvision's data set class where they are absent."""
import struct

import numpy as np
import pytest

from recondec.data.builtin import FASHION_MNIST_DIR, has_idx_files, load_fashion_mnist


def write_idx(folder, prefix, images: np.ndarray, labels: np.ndarray) -> None:
    """The idx format torchvision reads after its download (extracted, big-endian header)."""
    folder.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">4i", 0x803, n, h, w) + images.tobytes())
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">2i", 0x801, n) + labels.tobytes())


def test_torchvisions_fashion_mnist_is_read_where_the_idx_files_are_not(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), rng.integers(0, 10, 6, dtype=np.uint8)
    test = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8), rng.integers(0, 10, 4, dtype=np.uint8)
    write_idx(tmp_path / "FashionMNIST" / "raw", "train", *train)  # torchvision's layout, as if downloaded
    write_idx(tmp_path / "FashionMNIST" / "raw", "t10k", *test)
    assert not has_idx_files(str(tmp_path))
    got_train, got_test = load_fashion_mnist(str(tmp_path))
    for got, (images, labels) in ((got_train, train), (got_test, test)):
        assert got.images.shape == (len(labels), 28, 28, 3) and got.images.dtype == np.uint8
        assert np.array_equal(got.images[..., 1], images) and np.array_equal(got.labels, labels.astype(np.int64))


def test_no_files_and_no_network_is_an_error_saying_where_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not in .*empty and could not be downloaded there .*"
                                                r"apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(str(tmp_path / "empty"))


@pytest.mark.skipif(not has_idx_files(FASHION_MNIST_DIR), reason="Debian's dataset-fashion-mnist is not installed")
def test_debians_files_are_the_default():
    train, test = load_fashion_mnist(None)
    assert (len(train.labels), len(test.labels)) == (60_000, 10_000)

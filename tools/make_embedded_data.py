"""Regenerate dslc/data/embedded.npz: the first N training and M test examples of MNIST and
Fashion-MNIST, taken from a folder of the original IDX files (laid out as ../shared/data is).

    python tools/make_embedded_data.py ../shared/data [--train 5000] [--test 1000]

Keys: <dataset>_<split>_<field>, e.g. mnist_train_image (uint8 [N, 28, 28]), fashion_test_label.
Update dslc/data/README.md when the counts change.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from dslc.fileio import save_npz
from dslc.runtime.datasets import load_dataset

OUT = Path(__file__).resolve().parents[1] / "dslc" / "data" / "embedded.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="folder holding mnist/ and fashion/ IDX files")
    parser.add_argument("--train", type=int, default=5000, help="training examples per dataset")
    parser.add_argument("--test", type=int, default=1000, help="test examples per dataset")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    arrays = {}
    for dataset in ("mnist", "fashion"):
        for split, count in (("train", args.train), ("test", args.test)):
            for field, values in load_dataset(dataset, split, args.data).items():
                arrays[f"{dataset}_{split}_{field}"] = values[:count]
    save_npz(args.out, arrays, compress=True)
    print(f"wrote {args.out}: {Path(args.out).stat().st_size:,} bytes")


if __name__ == "__main__":
    main()

"""The backbone that specs/finetune.dsl imports: a small PyTorch CNN pretrained on MNIST (the
subset embedded in dslc, no download) shrunk to 8x8, exported to ONNX with torch's TorchScript
exporter at its defaults (opset 17, eval mode: each BatchNorm folded into its Conv), the batch dim
symbolic. Input `image` f32[N, 1, 8, 8] in [0, 1], output `features` f32[N, 32].

    python bench/export_backbone.py                      # writes specs/digits_backbone.onnx (~60 KB)
    python bench/export_backbone.py OUT.onnx --epochs 3 --seed 0

It prints the pretraining's test accuracy on MNIST (1,000 images) after each epoch.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "specs" / "digits_backbone.onnx"


def backbone():
    from torch import nn

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*block(1, 16), *block(16, 32), nn.MaxPool2d(2), *block(32, 32),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


def mnist_8x8(split: str):
    """The embedded MNIST subset as f32[N, 1, 8, 8]: the 20x20 box the digits are centred in,
    averaged down to 8x8, each image scaled to a maximum of 1 (as sklearn's digits look)."""
    import torch
    import torch.nn.functional as F
    data = np.load(ROOT / "dslc" / "data" / "embedded.npz")
    x = torch.from_numpy(data[f"mnist_{split}_image"][:, 4:24, 4:24].astype(np.float32) / 255)[:, None]
    x = F.adaptive_avg_pool2d(x, 8)
    x = x / x.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    return x, torch.from_numpy(data[f"mnist_{split}_label"].astype(np.int64))


def pretrain(epochs: int, seed: int, log=print):
    import torch
    from torch import nn
    torch.manual_seed(seed)
    net = backbone()
    head = nn.Linear(32, 10)
    model = nn.Sequential(net, head)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = mnist_8x8("train")
    xt, yt = mnist_8x8("test")
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=g).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = (model(xt).argmax(1) == yt).float().mean().item()
        log(f"epoch {epoch + 1}: MNIST 8x8 test accuracy {acc:.1%}")
    return net.eval()


def export(net, out: Path) -> Path:
    import torch
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(2, 1, 8, 8),), str(out), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["features"],
                          dynamic_axes={"image": {0: "N"}, "features": {0: "N"}})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(2)
    export(pretrain(args.epochs, args.seed), args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

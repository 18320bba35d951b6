"""The models of the ONNX zoo (bench/onnx_zoo.py, tests/test_onnx_zoo.py): tiny, built from configs
with random weights (no download), each a torch module with one tensor input and one tensor output,
and its export with either torch exporter.

    MODELS[name] -> Zoo(build, inputs, needs): build() gives the module, inputs(n) a batch of n
    export(module, batch, exporter, path): exporter 'torchscript' (dynamo=False, opset 17) or
    'dynamo' (dynamo=True, opset 18), the batch dim symbolic (N)

Every weight is moved off its initial value (`perturb`): LayerNorm's ones and zeros would otherwise
make many weights equal, and the gradients are taken at a point with nothing on a kink by design.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

EXPORTERS = {"torchscript": 17, "dynamo": 18}  # exporter -> opset


@dataclass(frozen=True)
class Zoo:
    build: Callable            # () -> torch.nn.Module (eval mode, one tensor in, one tensor out)
    inputs: Callable           # (n, generator) -> the input batch (one tensor)
    needs: str = "torch"       # 'torch' or 'transformers'


def perturb(module, seed: int = 0, scale: float = 0.05):
    """Every parameter plus small noise, reproducibly: distinct values, no weight exactly 0 or 1."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


class _Out:
    """Picks one field of a Hugging Face output (and fixes the inputs' keyword)."""

    @staticmethod
    def wrap(model, keyword: str, field: str, mask: bool = False):
        """mask: pass an all-ones attention mask (GPT-2 without one builds its mask with aten::diff,
        which the TorchScript exporter lacks)."""
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, x):
                extra = {"attention_mask": torch.ones_like(x)} if mask else {}
                return getattr(self.model(**{keyword: x}, **extra), field)

        return Wrapped()


# ------------------------------------------------------------------ torch-only models
def _mlp():
    from torch import nn
    return nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 32), nn.Tanh(),
                         nn.Linear(32, 10))


def _cnn():
    """A ResNet-like block: conv-BN-ReLU stem, one residual block, max pool, global pool, linear."""
    import torch
    from torch import nn

    class Cnn(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                       nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
            self.pool = nn.MaxPool2d(2)
            self.head = nn.Linear(8, 10)

        def forward(self, x):
            h = self.stem(x)
            h = torch.relu(h + self.block(h))
            h = self.pool(h).mean(dim=(2, 3))
            return self.head(h)

    return Cnn()


def _lstm():
    import torch
    from torch import nn

    class Lstm(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(8, 16, batch_first=True)
            self.head = nn.Linear(16, 4)

        def forward(self, x):
            out, _ = self.lstm(x)
            return self.head(torch.tanh(out))

    return Lstm()


def _unet():
    """Two levels: conv, max pool, conv, nn.Upsample (Resize), concat with the skip, conv."""
    import torch
    from torch import nn

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.down = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
            self.mid = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.out = nn.Sequential(nn.Conv2d(24, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1))

        def forward(self, x):
            skip = self.down(x)
            return self.out(torch.cat([skip, self.up(self.mid(skip))], dim=1))

    return UNet()


# ------------------------------------------------------------------ Hugging Face models (configs only)
def _bert():
    from transformers import BertConfig, BertModel
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, attn_implementation="eager")
    return _Out.wrap(BertModel(cfg, add_pooling_layer=False), "input_ids", "last_hidden_state")


def _gpt2():
    from transformers import GPT2Config, GPT2Model
    cfg = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64, use_cache=False,
                     bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    return _Out.wrap(GPT2Model(cfg), "input_ids", "last_hidden_state", mask=True)


def _distilbert():
    from transformers import DistilBertConfig, DistilBertModel
    cfg = DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                           max_position_embeddings=64, attn_implementation="eager")
    return _Out.wrap(DistilBertModel(cfg), "input_ids", "last_hidden_state")


def _vit():
    from transformers import ViTConfig, ViTModel
    cfg = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=2, intermediate_size=64, attn_implementation="eager")
    return _Out.wrap(ViTModel(cfg, add_pooling_layer=False), "pixel_values", "last_hidden_state")


def _resnet():
    from transformers import ResNetConfig, ResNetModel
    cfg = ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic")
    return _Out.wrap(ResNetModel(cfg), "pixel_values", "pooler_output")


def _convnext():
    from transformers import ConvNextConfig, ConvNextModel
    cfg = ConvNextConfig(num_channels=3, num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], patch_size=4)
    return _Out.wrap(ConvNextModel(cfg), "pixel_values", "pooler_output")


def _mobilenet_v2():
    from transformers import MobileNetV2Config, MobileNetV2Model
    cfg = MobileNetV2Config(num_channels=3, image_size=32, depth_multiplier=0.25, min_depth=4,
                            finegrained_output=False)
    return _Out.wrap(MobileNetV2Model(cfg), "pixel_values", "pooler_output")


def _whisper_encoder():
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder
    cfg = WhisperConfig(num_mel_bins=16, d_model=32, encoder_layers=2, encoder_attention_heads=2,
                        encoder_ffn_dim=64, max_source_positions=16, attn_implementation="eager")
    return _Out.wrap(WhisperEncoder(cfg), "input_features", "last_hidden_state")


def _t5_encoder():
    from transformers import T5Config, T5EncoderModel
    cfg = T5Config(vocab_size=100, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                   relative_attention_num_buckets=8, attn_implementation="eager")
    return _Out.wrap(T5EncoderModel(cfg), "input_ids", "last_hidden_state")


def _ids(n, g):
    import torch
    return torch.randint(0, 100, (n, 16), generator=g)


def _image(n, g):
    import torch
    return torch.rand(n, 3, 32, 32, generator=g)


def _randn(*shape):
    def draw(n, g):
        import torch
        return torch.randn(n, *shape, generator=g)
    return draw


MODELS: dict[str, Zoo] = {
    "mlp": Zoo(_mlp, _randn(16)),
    "cnn": Zoo(_cnn, _randn(3, 16, 16)),
    "lstm": Zoo(_lstm, _randn(12, 8)),
    "unet": Zoo(_unet, _randn(3, 16, 16)),
    "bert": Zoo(_bert, _ids, "transformers"),
    "gpt2": Zoo(_gpt2, _ids, "transformers"),
    "distilbert": Zoo(_distilbert, _ids, "transformers"),
    "vit": Zoo(_vit, _image, "transformers"),
    "resnet": Zoo(_resnet, _image, "transformers"),
    "convnext": Zoo(_convnext, _image, "transformers"),
    "mobilenet_v2": Zoo(_mobilenet_v2, _image, "transformers"),
    "whisper_encoder": Zoo(_whisper_encoder, _randn(16, 32), "transformers"),
    "t5_encoder": Zoo(_t5_encoder, _ids, "transformers"),
}


def missing(name: str, exporter: str | None = None) -> str | None:
    """Why this model (with this exporter) cannot be built here, or None."""
    import importlib.util
    mods = ["torch"] + (["transformers"] if MODELS[name].needs == "transformers" else [])
    mods += ["onnxscript"] if exporter == "dynamo" else []
    gone = [m for m in mods if importlib.util.find_spec(m) is None]
    return f"{', '.join(gone)} not installed" if gone else None


def build(name: str, seed: int = 0):
    """The model, in eval mode, its weights perturbed from their initial values (seeded)."""
    import torch
    torch.manual_seed(seed)
    return perturb(MODELS[name].build().eval(), seed)


def fuse_conv_bn(module, x):
    """Each eval-mode BatchNorm2d that reads a Conv2d's output folded into that Conv2d (and replaced
    by Identity), as the dynamo exporter's optimizer folds it: the torch twin then has the weights the
    .onnx file has. The pairs are found by running `x` through the module, not by module order."""
    import torch
    from torch import nn
    last, pairs = {}, []
    hooks = [m.register_forward_hook(lambda m, i, o: last.__setitem__(id(o), m))
             for m in module.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_pre_hook(lambda m, i: pairs.append((last[id(i[0])], m)) if id(i[0]) in last else None)
              for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        module(x)
    for h in hooks:
        h.remove()
    names = {m: n for n, m in module.named_modules()}
    for conv, bn in pairs:
        fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
        for p in fused.parameters():  # a bias made from none is born frozen
            p.requires_grad_(True)
        for child, new in ((conv, fused), (bn, nn.Identity())):
            parent, _, attr = names[child].rpartition(".")
            setattr(module.get_submodule(parent) if parent else module, attr, new)
    return module


def batch(name: str, n: int = 4, seed: int = 0):
    import torch
    return MODELS[name].inputs(n, torch.Generator().manual_seed(seed + 1))


def export(module, x, exporter: str, path: Path) -> Path:
    """`module` exported to `path` with input `x` and output `y`, the batch dim symbolic (`N`).
    The TorchScript exporter keeps BatchNormalization as it is (training=PRESERVE on an eval module):
    its default folds it into the Conv before it, whose weight then is no parameter of the module."""
    import torch
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=EXPORTERS[exporter],
                              input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}},
                              training=torch.onnx.TrainingMode.PRESERVE)
        elif exporter == "dynamo":
            prog = torch.onnx.export(module, (x,), dynamo=True, opset_version=EXPORTERS[exporter],
                                     input_names=["x"], output_names=["y"],
                                     dynamic_shapes=({0: torch.export.Dim("N", min=2, max=1024)},),
                                     external_data=False)
            prog.save(str(path), external_data=False)
        else:
            raise ValueError(f"unknown exporter {exporter!r}: {', '.join(EXPORTERS)}")
    return path


def ops_of(path: Path) -> list[str]:
    """The op types of an .onnx file, its subgraphs' (Loop, If, Scan bodies) included."""
    import onnx

    def walk(graph):
        for node in graph.node:
            yield node.op_type
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    yield from walk(sub)

    return sorted(set(walk(onnx.load(str(path), load_external_data=False).graph)))

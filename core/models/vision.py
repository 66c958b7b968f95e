"""Frozen vision towers behind one interface: images in, a pooled vector plus a grid of patch tokens out.

Implementations:
- `offline:efficientnet-lite0`: ImageNet EfficientNet-Lite0 shipped on PyPI; its 7x7x1280 final feature map
  gives 49 patch tokens, global average pooling gives the pooled vector.
- transformers CLIP / SigLIP / ViT / DINOv2 (any hub name or local folder): the last hidden layer, before any
  projection, as the reference takes it; pooled = CLS token (SigLIP has none: its attention-pool output).
- `tiny:clip`: a randomly initialised two-layer CLIP vision model, built in code, for fast tests.

A note without an image, or with one that cannot be read, is encoded from an all-zero pixel tensor, as the
reference does; callers get `has_image=False` for it so the stand-in is never mistaken for a real picture.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn

from core.errors import WorkbenchError
from core.models import provision

SUPPORTED_HF_VISION = ("clip", "clip_vision_model", "siglip", "siglip_vision_model", "siglip2", "vit", "dinov2", "dinov3_vit")


@dataclass
class VisionFeatures:
    pooled: torch.Tensor  # (N, width)
    patches: torch.Tensor  # (N, rows*cols, width), row-major over the grid
    grid: tuple[int, int]

    def index_select(self, index: torch.Tensor) -> "VisionFeatures":
        return VisionFeatures(self.pooled[index], self.patches[index], self.grid)

    def to(self, device=None, dtype=None) -> "VisionFeatures":
        return VisionFeatures(self.pooled.to(device=device, dtype=dtype), self.patches.to(device=device, dtype=dtype), self.grid)

    @staticmethod
    def cat(parts: list["VisionFeatures"]) -> "VisionFeatures":
        return VisionFeatures(torch.cat([p.pooled for p in parts]), torch.cat([p.patches for p in parts]), parts[0].grid)


def open_image(image) -> Image.Image | None:
    """A PIL RGB image from a PIL image or a path; None when absent, unreadable or over the pixel cap (the
    caller flags it). Decoding goes through the workbench's one capped image opener: a small file that
    claims a huge size must not be decoded in the serving process."""
    from core.data.images import ImageProblem, decode_image

    if image is None or (isinstance(image, str) and not image.strip()):
        return None
    try:
        return decode_image(image)
    except ImageProblem:
        return None


# How a picture becomes the tower's square input. "pad" trims near-white margins and pads the drawing onto a
# white square, so a tall or wide picture keeps its shape (clip art is mostly thin drawings on white, which
# "stretch" distorts and which a centre crop cuts); "stretch" resizes to the square, as early versions did.
PREPROCESSING = ("pad", "stretch")
WHITE_THRESHOLD = 245  # a channel at or above this is background when trimming margins
MARGIN_FRACTION = 0.04  # white border kept around the trimmed drawing, as a share of its longer side
PIXELS_VERSION = "2"  # bump when pixels() changes in a way the fingerprint cannot see


def square_on_white(picture: Image.Image, size: int, preprocessing: str = "pad") -> Image.Image:
    """An RGB `size` x `size` version of `picture` under the given preprocessing."""
    if preprocessing == "stretch":
        return picture.resize((size, size), Image.BICUBIC)
    if preprocessing != "pad":
        raise WorkbenchError(f"image preprocessing must be one of {', '.join(PREPROCESSING)}, not {preprocessing!r}")
    grey = picture.convert("L").point(lambda value: 255 if value < WHITE_THRESHOLD else 0)
    box = grey.getbbox()  # bounding box of the non-white pixels; None for a blank picture
    if box is not None:
        picture = picture.crop(box)
    width, height = picture.size
    side = max(width, height)
    side += 2 * int(round(MARGIN_FRACTION * side))
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(picture, ((side - width) // 2, (side - height) // 2))
    return canvas.resize((size, size), Image.BICUBIC)


class VisionTower(nn.Module):
    """Base class. Subclasses set `name`, `width`, `grid`, and implement `pixels` and `features`.

    A tower is frozen: it never leaves eval mode, whatever `train()` its owner calls. (A tower in training
    mode applies drop-connect or dropout, and its "frozen" features then change from pass to pass.)"""

    name: str
    width: int
    grid: tuple[int, int]
    preprocessing: str = "pad"

    def train(self, mode: bool = True) -> "VisionTower":
        return super().train(False)

    def fingerprint(self) -> str:
        """Names what produces this tower's features: its name, a digest of its weights, its mode and its
        preprocessing. Feature caches are keyed by it, so features from another extractor are never reused."""
        import hashlib

        digest = getattr(self, "_weights_digest", None)
        if digest is None:
            hasher = hashlib.sha1()
            for key, tensor in sorted(self.state_dict().items()):
                hasher.update(key.encode())
                hasher.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
            digest = self._weights_digest = hasher.hexdigest()[:16]
        mode = "train" if self.training else "eval"
        return f"{self.name}|{digest}|{mode}|{self.preprocessing}|{PIXELS_VERSION}"

    def pixels(self, images: list[Image.Image | None]) -> torch.Tensor:
        raise NotImplementedError

    def features(self, pixels: torch.Tensor) -> VisionFeatures:
        raise NotImplementedError

    @torch.inference_mode()
    def forward(self, images: list) -> tuple[VisionFeatures, torch.Tensor]:
        """Features for images (PIL, paths or None) and a bool mask of which ones were real pictures."""
        opened = [open_image(image) for image in images]
        has_image = torch.tensor([picture is not None for picture in opened])
        device = next(self.parameters()).device
        pixels = self.pixels(opened).to(device=device, dtype=next(self.parameters()).dtype)
        return self.features(pixels), has_image


class EfficientNetLite0Tower(VisionTower):
    name = provision.OFFLINE_VISION
    width = 1280
    grid = (7, 7)
    image_size = 224

    def __init__(self):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet
        from safetensors.torch import load_file

        self.network = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
        self.network.load_state_dict(load_file(provision.efficientnet_lite0_weights()))
        self.network.eval().requires_grad_(False)
        # Frozen and only run for inference: fold each BatchNorm into its convolution (one pass over the
        # activations less per layer) and keep activations channels-last, which oneDNN's bf16 depthwise and
        # 1x1 convolutions run ~2x faster than NCHW on this CPU (measured; bench/README.md).
        fold_batch_norms(self.network)
        self.network.to(memory_format=torch.channels_last)

    def pixels(self, images):
        size = self.image_size
        batch = torch.zeros(len(images), 3, size, size)
        for row, picture in enumerate(images):
            if picture is None:
                continue  # zero image, as the reference feeds for a missing picture
            resized = square_on_white(picture, size, self.preprocessing)
            array = torch.frombuffer(bytearray(resized.tobytes()), dtype=torch.uint8).view(size, size, 3)
            # EfficientNet-Lite was trained on inputs scaled as (x - 127) / 128.
            batch[row] = (array.permute(2, 0, 1).float() - 127.0) / 128.0
        return batch

    def features(self, pixels):
        pixels = pixels.contiguous(memory_format=torch.channels_last)
        feature_map = self._extract(pixels)  # (N, 1280, 7, 7)
        patches = feature_map.flatten(2).transpose(1, 2)
        return VisionFeatures(pooled=patches.mean(dim=1), patches=patches, grid=tuple(feature_map.shape[-2:]))

    def _extract(self, pixels: torch.Tensor) -> torch.Tensor:
        """`network.extract_features` with each ReLU6 fused into its convolution on CPU (oneDNN post-op):
        the activation pass over these large maps cost as much as the depthwise convolution itself."""
        network = self.network
        if pixels.device.type != "cpu" or not _FUSED_CONV or not isinstance(network._swish, nn.ReLU6) \
                or not isinstance(network._bn0, nn.Identity) or network.training:
            return network.extract_features(pixels)  # not folded (see __init__), or training: the plain path
        x = _conv(network._conv_stem, pixels, relu6=True)
        for block in network._blocks:
            inputs = x
            if block._block_args.expand_ratio != 1:
                x = _conv(block._expand_conv, x, relu6=True)
            x = _conv(block._depthwise_conv, x, relu6=True)
            x = _conv(block._project_conv, x, relu6=False)
            args = block._block_args
            if block.id_skip and args.stride == 1 and args.input_filters == args.output_filters:
                x = x + inputs
        return _conv(network._conv_head, x, relu6=True)


def fold_batch_norms(network: nn.Module) -> None:
    """Fold every eval-mode BatchNorm of an EfficientNet(-Lite) into the convolution before it, in place.

    TensorFlow-style static "same" padding that is symmetric becomes the convolution's own padding (one
    copy of the activations less); asymmetric padding (stride-2 layers) is kept as it is."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    pairs = [(network, "_conv_stem", "_bn0"), (network, "_conv_head", "_bn1")]
    for block in getattr(network, "_blocks", []):
        pairs += [(block, "_expand_conv", "_bn0"), (block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    for owner, conv_name, bn_name in pairs:
        conv, bn = getattr(owner, conv_name, None), getattr(owner, bn_name, None)
        if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
            continue
        fused = fuse_conv_bn_eval(conv.eval(), bn.eval())
        pad = getattr(fused, "static_padding", None)
        if isinstance(pad, nn.ZeroPad2d):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom and fused.padding == (0, 0):
                fused.padding = (top, left)
                fused.static_padding = nn.Identity()
        setattr(owner, conv_name, fused)
        setattr(owner, bn_name, nn.Identity())


_FUSED_CONV = hasattr(torch.ops.mkldnn, "_convolution_pointwise") and torch.backends.mkldnn.is_available()


def _conv(conv: nn.Conv2d, x: torch.Tensor, relu6: bool) -> torch.Tensor:
    """A BatchNorm-folded convolution (static same padding kept), then ReLU6, fused in one oneDNN call."""
    pad = getattr(conv, "static_padding", None)
    if pad is not None and not isinstance(pad, nn.Identity):
        x = pad(x)
    return torch.ops.mkldnn._convolution_pointwise(
        x, conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups,
        "hardtanh" if relu6 else "none", [0.0, 6.0] if relu6 else [], "")


class HFVisionTower(VisionTower):
    """Any transformers CLIP / SigLIP / ViT / DINOv2 vision model; frozen."""

    def __init__(self, model: nn.Module, processor, name: str, config=None):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.name = name
        config = config or model.config
        self.config = config
        self.width = config.hidden_size
        self.has_cls = config.model_type not in ("siglip", "siglip_vision_model", "siglip2")
        image_size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
        side = image_size // patch
        self.grid = (side, side)
        self.image_size = image_size

    def pixels(self, images):
        blank = Image.new("RGB", (self.image_size, self.image_size))
        real = [square_on_white(picture, self.image_size, self.preprocessing) if picture is not None else blank
                for picture in images]
        values = self.processor(images=real, return_tensors="pt")["pixel_values"]
        for row, picture in enumerate(images):
            if picture is None:
                values[row].zero_()
        return values

    def features(self, pixels):
        output = self.model(pixel_values=pixels)
        hidden = output.last_hidden_state
        register_tokens = getattr(self.config, "num_register_tokens", 0) or 0
        if self.has_cls:
            pooled, patches = hidden[:, 0], hidden[:, 1 + register_tokens:]
        else:
            pooled, patches = output.pooler_output, hidden
        rows, cols = self.grid
        patches = patches[:, : rows * cols]
        return VisionFeatures(pooled=pooled, patches=patches, grid=self.grid)


def tiny_clip_tower(seed: int = 0) -> HFVisionTower:
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8)
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    # A forked generator: fixed "pretrained" weights without reseeding the trainer's global generator.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPVisionModel(config)
    return HFVisionTower(model, processor, "tiny:clip")


def load_vision_tower(name: str) -> VisionTower:
    """A frozen vision tower by offline name, `tiny:clip`, hub name or local folder."""
    if name == provision.OFFLINE_VISION:
        return EfficientNetLite0Tower()
    if name == "tiny:clip":
        return tiny_clip_tower()
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise WorkbenchError(f"cannot load vision tower {name!r}: not a local model folder, and the hub is "
                             f"unreachable or has no such model ({type(error).__name__})") from None
    if config.model_type not in SUPPORTED_HF_VISION:
        raise WorkbenchError(f"unsupported vision architecture {config.model_type!r} for {name!r}; "
                             f"supported: {', '.join(SUPPORTED_HF_VISION)} or {provision.OFFLINE_VISION}")
    model = AutoModel.from_pretrained(name)
    vision_config = getattr(config, "vision_config", None) or config
    if hasattr(model, "vision_model"):
        model = model.vision_model  # a full CLIP/SigLIP model: keep the vision half, drop the text tower
    processor = AutoImageProcessor.from_pretrained(name)
    return HFVisionTower(model, processor, name, vision_config)

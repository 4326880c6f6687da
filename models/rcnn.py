"""Faster R-CNN and Mask R-CNN with a ResNet-50-FPN backbone, inference only, shaped for ONNX export.

The papers: Faster R-CNN (Ren et al. 2015) adds a Region Proposal Network to Fast R-CNN — a small conv head slides
over the features and scores k anchors per position; the best, decoded and de-duplicated by NMS, are pooled by
RoIAlign and classified and refined per class by a second head. FPN (Lin et al. 2017) gives both stages a feature
pyramid P2–P6 instead of one map. Mask R-CNN (He et al. 2017) adds a small FCN that predicts a 28×28 mask per
detection and class.

The file reads top to bottom like torchvision's ``faster_rcnn.py``: backbone (:class:`ResNetBody` — our ResNet-50
with frozen batch norm — and :class:`FeaturePyramidNetwork`), :class:`RegionProposalNetwork`
(:class:`AnchorGenerator`, :class:`RPNHead`), :class:`RoIHeads` (:class:`MultiScaleRoIAlign`, :class:`TwoMLPHead`,
:class:`FastRCNNPredictor`, and for masks :class:`MaskRCNNHeads`, :class:`MaskRCNNPredictor`), composed by
:class:`FasterRCNN` (:class:`MaskRCNN` when the heads carry masks). Module names follow torchvision so its COCO
checkpoints load with ``strict=True`` (:func:`adapt_state_dict` renames the legacy keys those files still use).

What differs from torchvision is the shape of the computation, not the arithmetic: every tensor after the backbone
has a fixed size per image, so ``torch.onnx.export(dynamo=True)`` sees no data-dependent shapes. The RPN keeps
exactly ``pre_nms_top_n`` candidates per level (a level with fewer anchors is padded with −inf scores) and
``post_nms_top_n`` proposals per image; removed candidates keep their slot with score −inf. NMS runs as one
:func:`rowwise_nms` call per stage — each row of its input (an image's level, or an image's class) is an
independent torchvision NMS — and answers a keep mask of the input's shape. The detections come out padded to
``detections_per_img``. RoIAlign and NMS themselves are torchvision.ops.

The contract of :meth:`FasterRCNN.forward`: ``images`` float32 ``(N, 3, H, W)``, already normalised by the ImageNet
mean/std and already resized (torchvision resizes the shorter side to 800, the longer to at most 1333; here that is
the caller's job, see ``service/masks.py``), any H and W — the batch is zero-padded to a multiple of 32 inside, as
torchvision pads its batch. It answers ``boxes (N, D, 4)`` (x1, y1, x2, y2 in the input's pixels), ``scores (N, D)``,
``labels (N, D)`` int64 (COCO category index, 0 in empty slots), ``num_detections (N,)``, best first; Mask R-CNN
adds ``masks (N, D, 1, 28, 28)``, the per-detection mask probabilities that torchvision pastes into the image.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.ops import Conv2dNormActivation, roi_align
from torchvision.ops.misc import FrozenBatchNorm2d

from .registry import ModelSpec, register_model
from .resnet import resnet50

__all__ = [
    "rowwise_nms",
    "BoxCoder",
    "ResNetBody",
    "FeaturePyramidNetwork",
    "BackboneWithFPN",
    "AnchorGenerator",
    "RPNHead",
    "RegionProposalNetwork",
    "MultiScaleRoIAlign",
    "TwoMLPHead",
    "FastRCNNPredictor",
    "MaskRCNNHeads",
    "MaskRCNNPredictor",
    "RoIHeads",
    "FasterRCNN",
    "MaskRCNN",
    "adapt_state_dict",
    "coco_categories",
    "fasterrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn",
]

NEG_INF = float("-inf")


@lru_cache(maxsize=1)
def coco_categories() -> tuple[str, ...]:
    """torchvision's 91-entry COCO list ("__background__", "person", …, with "N/A" for the unused ids)."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    return tuple(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])


# --- NMS as one operator with a fixed-shape answer --------------------------------------------------------------


@torch.library.custom_op("cnnserve::rowwise_nms", mutates_args=())
def rowwise_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: torch.Tensor) -> torch.Tensor:
    """Greedy NMS independently in every row: boxes ``(B, S, 4)``, scores ``(B, S)`` → keep mask ``(B, S)``.

    A box is dropped when it overlaps a better-scoring kept box of its row with IoU > ``iou_threshold`` (a 0-d
    tensor, so it can be a graph input); candidates scored −inf take no part. Eager: ``torchvision.ops.nms`` per
    row (exact per group, as torchvision's ``batched_nms`` means it). In ONNX it is one ``NonMaxSuppression`` node
    whose batch dimension is the row (``export/rcnn.py`` registers the translation).
    """
    keep = torch.zeros_like(scores, dtype=torch.bool)
    threshold = float(iou_threshold)
    for row in range(scores.shape[0]):
        (candidates,) = torch.nonzero(scores[row] > NEG_INF, as_tuple=True)
        kept = torchvision.ops.nms(boxes[row, candidates], scores[row, candidates], threshold)
        keep[row, candidates[kept]] = True
    return keep


@rowwise_nms.register_fake
def _(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(scores, dtype=torch.bool)


# --- boxes ------------------------------------------------------------------------------------------------------


class BoxCoder:
    """The R-CNN box parametrisation (Girshick et al. 2014, eq. 1): a box relative to a reference box is
    (dx, dy, dw, dh) = ((x − x_a)/w_a, (y − y_a)/h_a, log(w/w_a), log(h/h_a)), each scaled by ``weights``.
    Decoding is the inverse; dw and dh are clipped so exp() stays finite. Works on any leading shape."""

    def __init__(self, weights: tuple[float, float, float, float], clip: float = math.log(1000.0 / 16)) -> None:
        self.weights = weights
        self.clip = clip

    def decode(self, deltas: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """deltas (..., 4) and reference boxes broadcastable to it → boxes (..., 4) as (x1, y1, x2, y2)."""
        widths = reference[..., 2] - reference[..., 0]
        heights = reference[..., 3] - reference[..., 1]
        ctr_x = reference[..., 0] + 0.5 * widths
        ctr_y = reference[..., 1] + 0.5 * heights
        wx, wy, ww, wh = self.weights
        dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
        dw = torch.clamp(deltas[..., 2] / ww, max=self.clip)
        dh = torch.clamp(deltas[..., 3] / wh, max=self.clip)
        pred_ctr_x = dx * widths + ctr_x
        pred_ctr_y = dy * heights + ctr_y
        half_w = 0.5 * (torch.exp(dw) * widths)
        half_h = 0.5 * (torch.exp(dh) * heights)
        return torch.stack((pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h), -1)


def clip_boxes_to_image(boxes: torch.Tensor, size: tuple[Any, Any]) -> torch.Tensor:
    """Clamp x to [0, width] and y to [0, height]; ``size`` is (height, width)."""
    height, width = size
    x1, y1, x2, y2 = boxes.unbind(-1)
    x1, x2 = x1.clamp(min=0, max=width), x2.clamp(min=0, max=width)
    y1, y2 = y1.clamp(min=0, max=height), y2.clamp(min=0, max=height)
    return torch.stack((x1, y1, x2, y2), -1)


def has_min_size(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """True where both sides are at least ``min_size`` (torchvision's ``remove_small_boxes`` as a mask)."""
    return (boxes[..., 2] - boxes[..., 0] >= min_size) & (boxes[..., 3] - boxes[..., 1] >= min_size)


def _gather_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (N, M, *rest), index (N, K) → (N, K, *rest): per image, the rows named by index."""
    index = index.reshape(*index.shape, *([1] * (values.dim() - 2))).expand(*index.shape, *values.shape[2:])
    return torch.gather(values, 1, index)


# --- backbone: ResNet-50 body + FPN -------------------------------------------------------------------------------


def freeze_batch_norm(module: nn.Module, eps: float) -> nn.Module:
    """Replace every ``BatchNorm2d`` by a ``FrozenBatchNorm2d`` holding the same statistics (in place).

    Detection fine-tuning keeps ImageNet's BN statistics fixed (the batches are too small to estimate them), so
    the checkpoints store them as buffers without ``num_batches_tracked``.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=eps)
            with torch.no_grad():
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(frozen, key).copy_(getattr(child, key))
            setattr(module, name, frozen)
        else:
            freeze_batch_norm(child, eps)
    return module


class ResNetBody(nn.Module):
    """Our ResNet-50 (``models/resnet.py``) without its pooling and classifier: the stem and four stages, answering
    C2–C5 at strides 4, 8, 16, 32 with 256, 512, 1024, 2048 channels. Batch norm is frozen, with ``eps`` 0 as in
    the published COCO checkpoints (torchvision's builder overwrites their eps to 0.0 the same way).

    Frozen statistics cannot tame a *random* network: its activations would grow to ~10² through the sixteen
    blocks, saturating every score and letting float noise decide the detections. So random weights start each
    residual block as the identity (``zero_init_residual``, Goyal et al. 2017); any checkpoint overwrites this.
    """

    def __init__(self, *, bn_eps: float = 0.0) -> None:
        super().__init__()
        resnet = freeze_batch_norm(resnet50(zero_init_residual=True), bn_eps)
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        self.out_channels = (256, 512, 1024, 2048)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, 64, H/4, W/4)
        c2 = self.layer1(x)  # (N, 256, H/4, W/4)
        c3 = self.layer2(c2)  # (N, 512, H/8, W/8)
        c4 = self.layer3(c3)  # (N, 1024, H/16, W/16)
        c5 = self.layer4(c4)  # (N, 2048, H/32, W/32)
        return [c2, c3, c4, c5]


class FeaturePyramidNetwork(nn.Module):
    """FPN's top-down pathway with lateral connections: P5 = conv3×3(lat(C5)); going down, each level adds the
    2× nearest-upsampled coarser sum to its own 1×1 lateral, then a 3×3 conv smooths it. P6 is P5 max-pooled
    with stride 2 (torchvision's ``LastLevelMaxPool``), used by the RPN only."""

    def __init__(self, in_channels: tuple[int, ...], out_channels: int) -> None:
        super().__init__()
        self.inner_blocks = nn.ModuleList(
            Conv2dNormActivation(c, out_channels, kernel_size=1, padding=0, norm_layer=None, activation_layer=None)
            for c in in_channels
        )
        self.layer_blocks = nn.ModuleList(
            Conv2dNormActivation(out_channels, out_channels, kernel_size=3, norm_layer=None, activation_layer=None)
            for _ in in_channels
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        last_inner = self.inner_blocks[-1](features[-1])
        results = [self.layer_blocks[-1](last_inner)]
        for level in range(len(features) - 2, -1, -1):
            lateral = self.inner_blocks[level](features[level])
            top_down = F.interpolate(last_inner, size=lateral.shape[-2:], mode="nearest")
            last_inner = lateral + top_down
            results.insert(0, self.layer_blocks[level](last_inner))
        results.append(F.max_pool2d(results[-1], kernel_size=1, stride=2, padding=0))  # P6
        return results  # P2, P3, P4, P5, P6: (N, out_channels, H/2^k, W/2^k)


class BackboneWithFPN(nn.Module):
    """``body`` (C2–C5) followed by ``fpn`` (P2–P6), all with ``out_channels`` = 256."""

    def __init__(self, *, bn_eps: float = 0.0, out_channels: int = 256) -> None:
        super().__init__()
        self.body = ResNetBody(bn_eps=bn_eps)
        self.fpn = FeaturePyramidNetwork(self.body.out_channels, out_channels)
        self.out_channels = out_channels

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.fpn(self.body(images))


# --- Region Proposal Network ---------------------------------------------------------------------------------------


class AnchorGenerator(nn.Module):
    """One anchor size per pyramid level, three aspect ratios (h/w) each, centred on every feature-map cell.

    The stride of a level is the padded image size integer-divided by the feature size, as torchvision computes
    it (so P6 of an 800-pixel side has stride 61, not 64). Anchor order: level, then row, column, ratio — the
    order of the RPN head's flattened outputs.
    """

    def __init__(
        self,
        sizes: tuple[int, ...] = (32, 64, 128, 256, 512),
        aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
    ) -> None:
        super().__init__()
        scales = torch.tensor(sizes, dtype=torch.float32)[:, None]  # (L, 1)
        h_ratios = torch.sqrt(torch.tensor(aspect_ratios, dtype=torch.float32))[None, :]  # (1, A)
        ws, hs = (1 / h_ratios) * scales, h_ratios * scales  # (L, A): w·h = size², h/w = ratio
        cell_anchors = (torch.stack([-ws, -hs, ws, hs], dim=-1) / 2).round()  # (L, A, 4), zero-centred
        self.register_buffer("cell_anchors", cell_anchors, persistent=False)
        self.num_anchors_per_location = len(aspect_ratios)

    def forward(self, features: list[torch.Tensor], padded_size: tuple[Any, Any]) -> list[torch.Tensor]:
        anchors = []
        for level, feature in enumerate(features):
            grid_h, grid_w = feature.shape[-2:]
            stride_h, stride_w = padded_size[0] // grid_h, padded_size[1] // grid_w
            shifts_x = torch.arange(grid_w, dtype=torch.float32, device=feature.device) * stride_w
            shifts_y = torch.arange(grid_h, dtype=torch.float32, device=feature.device) * stride_h
            shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=-1).reshape(-1, 1, 4)  # (h·w, 1, 4)
            anchors.append((shifts + self.cell_anchors[level][None]).reshape(-1, 4))  # (h·w·A, 4)
        return anchors


class RPNHead(nn.Module):
    """A 3×3 conv + ReLU shared by all levels, then per anchor an objectness logit and four box deltas."""

    def __init__(self, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(Conv2dNormActivation(in_channels, in_channels, kernel_size=3, norm_layer=None))
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, kernel_size=1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        hidden = [self.conv(f) for f in features]
        return [self.cls_logits(t) for t in hidden], [self.bbox_pred(t) for t in hidden]  # (N, A, h, w), (N, 4A, h, w)


class RegionProposalNetwork(nn.Module):
    """Anchors + head → proposals: per level the ``pre_nms_top_n`` best-scored anchors are decoded, clipped to
    the image, stripped of tiny boxes and de-duplicated by NMS (per image and level); the ``post_nms_top_n``
    best survivors over all levels are the image's proposals. Fixed sizes throughout; a slot whose candidate was
    removed holds score −inf (reported as ``valid = False``)."""

    def __init__(
        self,
        anchor_generator: AnchorGenerator,
        head: RPNHead,
        *,
        pre_nms_top_n: int = 1000,
        post_nms_top_n: int = 1000,
        nms_thresh: float = 0.7,
        min_size: float = 1e-3,
    ) -> None:
        super().__init__()
        self.anchor_generator = anchor_generator
        self.head = head
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.pre_nms_top_n = pre_nms_top_n
        self.post_nms_top_n = post_nms_top_n
        self.nms_thresh = nms_thresh
        self.min_size = min_size

    def forward(
        self, features: list[torch.Tensor], padded_size: tuple[Any, Any], image_size: tuple[Any, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """features P2–P6 → proposals (N, post_nms_top_n, 4) in image pixels and valid (N, post_nms_top_n)."""
        objectness, deltas = self.head(features)
        anchors = self.anchor_generator(features, padded_size)
        level_boxes, level_scores = [], []
        for logits, level_deltas, level_anchors in zip(objectness, deltas, anchors, strict=True):
            n, _, h, w = logits.shape
            logits = logits.permute(0, 2, 3, 1).reshape(n, -1)  # (N, h·w·A): row, column, anchor
            level_deltas = level_deltas.view(n, -1, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)  # (N, h·w·A, 4)
            num_anchors = logits.shape[1]
            # The level's best pre_nms_top_n anchors; a level with fewer anchors is padded with −inf.
            padded = torch.cat([logits, logits.new_full((n, self.pre_nms_top_n), NEG_INF)], dim=1)
            top_logits, index = padded.topk(self.pre_nms_top_n, dim=1)  # (N, K)
            valid = index < num_anchors
            index = index.clamp(max=num_anchors - 1)
            boxes = self.box_coder.decode(_gather_rows(level_deltas, index), level_anchors[index])  # (N, K, 4)
            boxes = clip_boxes_to_image(boxes, image_size)
            valid = valid & has_min_size(boxes, self.min_size)
            level_boxes.append(boxes)
            level_scores.append(torch.where(valid, torch.sigmoid(top_logits), NEG_INF))
        boxes = torch.stack(level_boxes, dim=1)  # (N, L, K, 4)
        scores = torch.stack(level_scores, dim=1)  # (N, L, K)
        n, num_levels, k = scores.shape
        threshold = torch.tensor(self.nms_thresh, dtype=torch.float32)
        keep = rowwise_nms(boxes.reshape(n * num_levels, k, 4), scores.reshape(n * num_levels, k), threshold)
        scores = torch.where(keep.view(n, num_levels, k), scores, NEG_INF).reshape(n, num_levels * k)
        top_scores, index = scores.topk(self.post_nms_top_n, dim=1)  # (N, post_nms_top_n), best first
        proposals = _gather_rows(boxes.reshape(n, num_levels * k, 4), index)
        return proposals, top_scores > NEG_INF


# --- RoI heads -------------------------------------------------------------------------------------------------


class MultiScaleRoIAlign(nn.Module):
    """RoIAlign from the pyramid level that suits each box (FPN paper, eq. 1): k = ⌊4 + log2(√(wh)/224)⌋,
    clamped to P2–P5. Each level pools its own boxes with ``torchvision.ops.roi_align`` (``aligned=False``,
    ``sampling_ratio`` 2, as torchvision's ``MultiScaleRoIAlign``); strides are the nominal 4, 8, 16, 32."""

    def __init__(self, output_size: int, sampling_ratio: int = 2, *, canonical_scale: int = 224) -> None:
        super().__init__()
        self.output_size = (output_size, output_size)
        self.sampling_ratio = sampling_ratio
        self.canonical_scale = canonical_scale
        self.canonical_level = 4
        self.scales = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
        self.k_min = 2

    def levels(self, boxes: torch.Tensor) -> torch.Tensor:
        """boxes (K, 4) → pyramid level index 0–3 (P2–P5) per box."""
        size = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        level = torch.floor(self.canonical_level + torch.log2(size / self.canonical_scale) + 1e-6)
        k_max = self.k_min + len(self.scales) - 1
        return level.clamp(min=self.k_min, max=k_max).to(torch.int64) - self.k_min

    def forward(self, features: list[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
        """P2–P5 and boxes (N, K, 4) in image pixels → pooled features (N·K, C, s, s)."""
        n, k = boxes.shape[:2]
        image_index = torch.arange(n, dtype=boxes.dtype, device=boxes.device).view(n, 1, 1).expand(n, k, 1)
        rois = torch.cat([image_index, boxes], dim=2).reshape(n * k, 5)  # (N·K, 5): image, x1, y1, x2, y2
        levels = self.levels(rois[:, 1:])
        pooled = rois.new_zeros((n * k, features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales, strict=True)):
            (index,) = torch.nonzero(levels == level, as_tuple=True)
            level_pooled = roi_align(feature, rois[index], self.output_size, scale, self.sampling_ratio)
            pooled = pooled.index_copy(0, index, level_pooled)
        return pooled


class TwoMLPHead(nn.Module):
    """Fast R-CNN's box head on FPN: flatten the 7×7 pooled features, two fully connected layers with ReLU."""

    def __init__(self, in_channels: int, representation_size: int) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_channels, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(start_dim=1)))))  # (R, representation_size)


class FastRCNNPredictor(nn.Module):
    """Class logits (background first) and one set of box deltas per class."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_score(x), self.bbox_pred(x)  # (R, num_classes), (R, num_classes·4)


class MaskRCNNHeads(nn.Sequential):
    """Mask R-CNN's FCN: four 3×3 conv + ReLU layers on the 14×14 pooled features."""

    def __init__(self, in_channels: int, layers: tuple[int, ...] = (256, 256, 256, 256)) -> None:
        blocks, previous = [], in_channels
        for channels in layers:
            blocks.append(Conv2dNormActivation(previous, channels, kernel_size=3, norm_layer=None))
            previous = channels
        super().__init__(*blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)


class MaskRCNNPredictor(nn.Sequential):
    """2× up-convolution to 28×28 + ReLU, then one mask logit map per class."""

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int) -> None:
        super().__init__(
            OrderedDict(
                conv5_mask=nn.ConvTranspose2d(in_channels, dim_reduced, kernel_size=2, stride=2),
                relu=nn.ReLU(inplace=True),
                mask_fcn_logits=nn.Conv2d(dim_reduced, num_classes, kernel_size=1),
            )
        )
        for name, param in self.named_parameters():
            if "weight" in name:
                nn.init.kaiming_normal_(param, mode="fan_out", nonlinearity="relu")


class RoIHeads(nn.Module):
    """Fast R-CNN on the proposals, then (Mask R-CNN) the mask branch on the final detections.

    Per proposal: class probabilities (softmax) and one decoded box per class. Every (proposal, class ≠
    background) pair is a candidate; those scoring ≤ ``score_threshold``, with a side < 0.01 px, or from an empty
    proposal slot are dropped; NMS runs per image and class; the ``detections_per_img`` best remain.
    """

    def __init__(
        self,
        box_roi_pool: MultiScaleRoIAlign,
        box_head: TwoMLPHead,
        box_predictor: FastRCNNPredictor,
        *,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        mask_roi_pool: MultiScaleRoIAlign | None = None,
        mask_head: MaskRCNNHeads | None = None,
        mask_predictor: MaskRCNNPredictor | None = None,
    ) -> None:
        super().__init__()
        self.box_roi_pool = box_roi_pool
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.box_coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.min_size = 1e-2
        if mask_roi_pool is not None:  # torchvision registers the mask parts only for Mask R-CNN
            self.mask_roi_pool = mask_roi_pool
            self.mask_head = mask_head
            self.mask_predictor = mask_predictor
        self.has_masks = mask_roi_pool is not None

    def forward(
        self,
        features: list[torch.Tensor],
        proposals: torch.Tensor,
        valid: torch.Tensor,
        image_size: tuple[Any, Any],
        score_threshold: torch.Tensor | float,
        iou_threshold: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        n, k = proposals.shape[:2]
        class_logits, box_deltas = self.box_predictor(self.box_head(self.box_roi_pool(features, proposals)))
        boxes = self.box_coder.decode(box_deltas.view(n, k, -1, 4), proposals[:, :, None])  # (N, K, classes, 4)
        boxes = clip_boxes_to_image(boxes, image_size)[:, :, 1:]  # background column dropped
        scores = F.softmax(class_logits, -1).view(n, k, -1)[:, :, 1:]  # (N, K, C)
        candidate = valid[:, :, None] & (scores > score_threshold) & has_min_size(boxes, self.min_size)
        boxes = boxes.transpose(1, 2)  # (N, C, K, 4): one NMS row per image and class
        scores = torch.where(candidate, scores, NEG_INF).transpose(1, 2)  # (N, C, K)
        num_classes = scores.shape[1]
        keep = rowwise_nms(boxes.reshape(n * num_classes, k, 4), scores.reshape(n * num_classes, k), iou_threshold)
        scores = torch.where(keep.view(n, num_classes, k), scores, NEG_INF).reshape(n, num_classes * k)
        top_scores, index = scores.topk(self.detections_per_img, dim=1)  # (N, D), best first
        found = top_scores > NEG_INF
        detections = {
            "boxes": torch.where(found[..., None], _gather_rows(boxes.reshape(n, num_classes * k, 4), index), 0.0),
            "scores": torch.where(found, top_scores, 0.0),
            "labels": torch.where(found, torch.div(index, k, rounding_mode="floor") + 1, 0),
            "num_detections": found.sum(dim=1),
        }
        if self.has_masks:
            detections["masks"] = self.masks(features, detections["boxes"], detections["labels"], found)
        return detections

    def masks(
        self, features: list[torch.Tensor], boxes: torch.Tensor, labels: torch.Tensor, found: torch.Tensor
    ) -> torch.Tensor:
        """Mask probabilities (N, D, 1, 28, 28) of each detection's own class; zero in empty slots."""
        n, d = labels.shape
        logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes)))  # (N·D, classes, 28, 28)
        size = logits.shape[-2:]
        index = labels.reshape(n * d, 1, 1, 1).expand(n * d, 1, *size)
        masks = torch.sigmoid(torch.gather(logits, 1, index)).view(n, d, 1, *size)
        return torch.where(found[:, :, None, None, None], masks, 0.0)


# --- the detector ----------------------------------------------------------------------------------------------


class FasterRCNN(nn.Module):
    """backbone → RPN → RoI heads (with a mask branch for Mask R-CNN); the tensor contract is in the module
    docstring. ``score_threshold`` / ``iou_threshold`` override the box head's defaults per call (0-d tensors in
    an exported graph)."""

    size_divisible = 32

    def __init__(self, backbone: BackboneWithFPN, rpn: RegionProposalNetwork, roi_heads: RoIHeads) -> None:
        super().__init__()
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads

    def forward(
        self,
        images: torch.Tensor,
        score_threshold: torch.Tensor | float | None = None,
        iou_threshold: torch.Tensor | float | None = None,
    ) -> dict[str, torch.Tensor]:
        image_size = images.shape[-2:]
        pad_h, pad_w = (-images.shape[-2]) % self.size_divisible, (-images.shape[-1]) % self.size_divisible
        padded = F.pad(images, (0, pad_w, 0, pad_h))  # torchvision's batch padding: zeros after normalisation
        features = self.backbone(padded)  # P2–P6
        proposals, valid = self.rpn(features, padded.shape[-2:], image_size)
        if score_threshold is None:
            score_threshold = self.roi_heads.score_thresh
        if iou_threshold is None:
            iou_threshold = self.roi_heads.nms_thresh
        if not isinstance(iou_threshold, torch.Tensor):
            iou_threshold = torch.tensor(iou_threshold, dtype=torch.float32)
        iou_threshold = iou_threshold.clamp(0.0, 1.0)  # ONNX's NonMaxSuppression refuses values outside [0, 1]
        return self.roi_heads(features[:4], proposals, valid, image_size, score_threshold, iou_threshold)


class MaskRCNN(FasterRCNN):
    """Faster R-CNN whose RoI heads carry the mask branch (He et al. 2017): it also answers ``masks``."""


# --- checkpoints, variants, builders ---------------------------------------------------------------------------

# Keys of the published COCO checkpoints that predate torchvision's module versions 2 (same renames as
# torchvision's RPNHead / MaskRCNNHeads `_load_from_state_dict`).
_LEGACY_KEYS = (
    ("rpn.head.conv.weight", "rpn.head.conv.0.0.weight"),
    ("rpn.head.conv.bias", "rpn.head.conv.0.0.bias"),
    *(
        (f"roi_heads.mask_head.mask_fcn{i + 1}.{kind}", f"roi_heads.mask_head.{i}.0.{kind}")
        for i in range(4)
        for kind in ("weight", "bias")
    ),
)


def adapt_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the legacy keys of torchvision's COCO checkpoints (``rpn.head.conv.weight`` →
    ``rpn.head.conv.0.0.weight``, ``roi_heads.mask_head.mask_fcn1.weight`` → ``roi_heads.mask_head.0.0.weight``);
    other keys pass through, in order. The input is left alone; ``_metadata`` is kept."""
    renames = dict(_LEGACY_KEYS)
    adapted: dict[str, torch.Tensor] = OrderedDict((renames.get(k, k), v) for k, v in state_dict.items())
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        adapted._metadata = metadata  # type: ignore[attr-defined]
    return adapted


@dataclass(frozen=True)
class _Variant:
    task: str
    masks: bool
    weights: str
    description: str


_RCNNS: dict[str, _Variant] = {
    "fasterrcnn_resnet50_fpn": _Variant(
        "detection",
        False,
        "FasterRCNN_ResNet50_FPN_Weights.COCO_V1",
        "Faster R-CNN, ResNet-50-FPN backbone, COCO's 91 categories",
    ),
    "maskrcnn_resnet50_fpn": _Variant(
        "instance_segmentation",
        True,
        "MaskRCNN_ResNet50_FPN_Weights.COCO_V1",
        "Mask R-CNN, ResNet-50-FPN backbone, COCO's 91 categories, 28×28 masks per detection",
    ),
}


def _spec(name: str) -> ModelSpec:
    variant = _RCNNS[name]
    return ModelSpec(
        name=name,
        task=variant.task,
        family="rcnn",
        # The exporter's example/parity size (any H, W works); serving resizes the shorter side to 800.
        input_size=(320, 416),
        resize_size=800,
        max_size=1333,
        num_classes=91,
        labels=coco_categories(),
        torchvision=name,
        torchvision_weights=variant.weights,
        description=variant.description,
    )


def _rcnn(
    name: str,
    *,
    num_classes: int = 91,
    bn_eps: float = 0.0,
    rpn_pre_nms_top_n_test: int = 1000,
    rpn_post_nms_top_n_test: int = 1000,
    rpn_nms_thresh: float = 0.7,
    box_score_thresh: float = 0.05,
    box_nms_thresh: float = 0.5,
    box_detections_per_img: int = 100,
) -> FasterRCNN:
    variant = _RCNNS[name]
    backbone = BackboneWithFPN(bn_eps=bn_eps)
    channels = backbone.out_channels
    anchor_generator = AnchorGenerator()
    rpn = RegionProposalNetwork(
        anchor_generator,
        RPNHead(channels, anchor_generator.num_anchors_per_location),
        pre_nms_top_n=rpn_pre_nms_top_n_test,
        post_nms_top_n=rpn_post_nms_top_n_test,
        nms_thresh=rpn_nms_thresh,
    )
    masks: dict[str, nn.Module] = {}
    if variant.masks:
        masks = {
            "mask_roi_pool": MultiScaleRoIAlign(14),
            "mask_head": MaskRCNNHeads(channels),
            "mask_predictor": MaskRCNNPredictor(256, 256, num_classes),
        }
    roi_heads = RoIHeads(
        MultiScaleRoIAlign(7),
        TwoMLPHead(channels * 7 * 7, 1024),
        FastRCNNPredictor(1024, num_classes),
        score_thresh=box_score_thresh,
        nms_thresh=box_nms_thresh,
        detections_per_img=box_detections_per_img,
        **masks,
    )
    return (MaskRCNN if variant.masks else FasterRCNN)(backbone, rpn, roi_heads)


@register_model(_spec("fasterrcnn_resnet50_fpn"))
def fasterrcnn_resnet50_fpn(**kwargs: Any) -> FasterRCNN:
    return _rcnn("fasterrcnn_resnet50_fpn", **kwargs)


@register_model(_spec("maskrcnn_resnet50_fpn"))
def maskrcnn_resnet50_fpn(**kwargs: Any) -> MaskRCNN:
    return _rcnn("maskrcnn_resnet50_fpn", **kwargs)

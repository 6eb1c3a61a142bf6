"""A few-shot detector with a swappable fusion module: Siamese backbone → fusion → CenterNet head.

    images (B, 3, H, W)      supports (B, K, 3, S, S)
          │                         │
      Backbone ── shared weights ── Backbone        P2..P5, strides 4..32
          │                         │
          └──── fusion(query, support) ────┘         CHEAF or PSALM (``psalm.registry``)
                        │
         per level: 1×1 to head width, shared tower
                        │
        heatmap of the support's class + box (offset, log size)

The head is CenterNet-style on every level: each ground-truth box is assigned to the level whose
typical object size (``level_sizes``) is nearest in log scale, a Gaussian peak marks its centre
cell there, and the centre cell regresses the sub-cell offset and the box's log width and height.
Decoding keeps 3×3 local maxima per level, the top ``top_k`` over all levels, then NMS.

The support reaches the prediction only through the fusion module, unless ``support_in_head``
adds a cosine-similarity map between the query's and the support's embeddings to the head's
input (a prototype head, as in the report's source project). The embeddings (a 1×1 projection
of the backbone's maps per level) are trained by an optional matching loss (``match_weight``):
it makes the shared backbone's features tell classes apart, which the fusion module's support
path can then use. ``support_mode="none"`` passes
``support_features=None`` to the fusion module only; with ``support_in_head`` the head still sees
the support, so say which when reporting a support ablation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from psalm.boxes import nms

SUPPORT_MODES = ("normal", "none")


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(max(1, channels // 8), channels)


def _conv_block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), _norm(cout), nn.ReLU()
    )


class ResidualBlock(nn.Module):
    """Two 3×3 convs with an identity skip."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_block(channels, channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            _norm(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.body(x))


class Backbone(nn.Module):
    """A small CNN giving P2..P5 (strides 4, 8, 16, 32) with ``channels`` widths."""

    def __init__(self, channels: Sequence[int] = (32, 64, 128, 256)) -> None:
        super().__init__()
        c2 = channels[0]
        self.stem = nn.Sequential(
            _conv_block(3, c2 // 2, stride=2), _conv_block(c2 // 2, c2, stride=2), ResidualBlock(c2)
        )
        self.stages = nn.ModuleList(
            nn.Sequential(_conv_block(cin, cout, stride=2), ResidualBlock(cout))
            for cin, cout in zip(channels[:-1], channels[1:], strict=True)
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = [self.stem(x)]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        return feats


@dataclass(frozen=True)
class LevelOutput:
    """One level's raw predictions."""

    heatmap: Tensor  # (B, 1, H, W) logits
    box: Tensor  # (B, 4, H, W): offset x, offset y (cells), log(w / stride), log(h / stride)


@dataclass(frozen=True)
class Prediction:
    """A forward pass: per-level predictions, plus the embeddings the matching loss uses."""

    levels: list[LevelOutput]
    query_embeddings: list[Tensor]  # per level (B, D, H, W), L2-normalised over D
    support_embeddings: list[Tensor]  # per level (B, D), L2-normalised


class FewShotDetector(nn.Module):
    """Detects the instances of the support's class in the query image."""

    def __init__(
        self,
        fusion: nn.Module,
        backbone_channels: Sequence[int] = (32, 64, 128, 256),
        fused_channels: Sequence[int] = (128, 256, 512, 512),
        head_channels: int = 64,
        level_sizes: Sequence[float] = (16, 32, 64, 128),
        support_in_head: bool = False,
        embed_dim: int = 64,
        match_temperature: float = 0.1,
    ) -> None:
        super().__init__()
        self.backbone = Backbone(backbone_channels)
        self.fusion = fusion
        self.strides = (4, 8, 16, 32)
        self.level_sizes = tuple(float(s) for s in level_sizes)
        self.support_in_head = support_in_head
        self.match_temperature = match_temperature
        extra = 1 if support_in_head else 0
        self.head_inputs = nn.ModuleList(
            nn.Conv2d(c + extra, head_channels, 1) for c in fused_channels
        )
        # Siamese embeddings of the backbone's query maps and support prototypes, per level:
        # trained by the matching loss, and the head's similarity map if support_in_head.
        # The support's embedding is one vector from all its levels pooled (a glyph's size in a
        # support crop is fixed while query objects span the levels, so per-level support
        # prototypes would compare different scales); the query's is per level and position.
        self.embed_query = nn.ModuleList(nn.Conv2d(c, embed_dim, 1) for c in backbone_channels)
        self.embed_support = nn.Linear(sum(backbone_channels), embed_dim)
        self.tower = nn.Sequential(
            _conv_block(head_channels, head_channels), _conv_block(head_channels, head_channels)
        )
        self.heatmap = nn.Conv2d(head_channels, 1, 3, padding=1)
        self.box = nn.Conv2d(head_channels, 4, 3, padding=1)
        nn.init.constant_(self.heatmap.bias, -math.log((1 - 0.01) / 0.01))  # prior 0.01

    def forward(self, images: Tensor, supports: Tensor, support_mode: str = "normal") -> Prediction:
        """images (B, 3, H, W); supports (B, K, 3, S, S); support_mode ``normal`` | ``none``."""
        return self.predict(self.backbone(images), self.support_features(supports), support_mode)

    def support_features(self, supports: Tensor) -> list[Tensor]:
        """Backbone maps of K-shot supports (B, K, 3, S, S): per level (B, K, C, h, w)."""
        b, k = supports.shape[:2]
        return [f.reshape(b, k, *f.shape[1:]) for f in self.backbone(supports.flatten(0, 1))]

    def predict(
        self, query: list[Tensor], support: list[Tensor], support_mode: str = "normal"
    ) -> Prediction:
        """Fusion and head on backbone maps (``forward`` without the backbone): evaluation
        computes each image's and each class's maps once and reuses them for every query."""
        if support_mode not in SUPPORT_MODES:
            raise ValueError(f"support_mode must be one of {SUPPORT_MODES}, got {support_mode!r}")
        fused = self.fusion(query, None if support_mode == "none" else support)
        q_emb = [F.normalize(e(q), dim=1) for e, q in zip(self.embed_query, query, strict=True)]
        pooled = torch.cat([s.mean(dim=(1, 3, 4)) for s in support], dim=1)  # (B, ΣC)
        s_emb = [F.normalize(self.embed_support(pooled), dim=1)] * len(query)
        levels = []
        for i, f in enumerate(fused):
            if self.support_in_head:
                similarity = torch.einsum("bdhw,bd->bhw", q_emb[i], s_emb[i])[:, None]
                f = torch.cat([f, similarity], dim=1)
            h = self.tower(self.head_inputs[i](f))
            levels.append(LevelOutput(self.heatmap(h), self.box(h)))
        return Prediction(levels, q_emb, s_emb)

    # ------------------------------------------------------------------------------ training

    def assign_level(self, boxes: Tensor) -> Tensor:
        """Level index per box: the level whose typical size is nearest in log scale."""
        side = (boxes[:, 2:] - boxes[:, :2]).amax(dim=1).clamp(min=1.0)
        sizes = boxes.new_tensor(self.level_sizes)
        return (side.log()[:, None] - sizes.log()[None]).abs().argmin(dim=1)

    def loss(
        self,
        prediction: Prediction,
        boxes: list[Tensor],
        class_ids: Tensor | None = None,
        match_weight: float = 0.0,
    ) -> dict[str, Tensor]:
        """Focal loss on the Gaussian heatmaps, L1 on centre offsets and log sizes, and (with
        ``match_weight`` > 0) the matching loss: each target's query embedding must be nearer its
        own episode's support embedding than the other episodes' (InfoNCE over the batch;
        episodes of the same class are not counted as negatives)."""
        heat_terms, box_terms = [], []
        num_pos = sum(len(b) for b in boxes)
        boxes = [b.cpu() for b in boxes]  # targets are built on the CPU, then moved once
        outputs = prediction.levels
        match_logits, match_labels = [], []
        for level, out in enumerate(outputs):
            target, mask, box_target = (
                t.to(out.heatmap.device) for t in self._targets(level, out.heatmap.shape, boxes)
            )
            heat_terms.append(_focal_loss(out.heatmap, target))
            if mask.any():
                pred = out.box.permute(0, 2, 3, 1)[mask]  # (P, 4)
                box_terms.append(F.l1_loss(pred, box_target, reduction="sum"))
                if match_weight > 0:
                    episode = mask.nonzero()[:, 0]  # (P,) which episode each centre belongs to
                    q = prediction.query_embeddings[level].permute(0, 2, 3, 1)[mask]  # (P, D)
                    logits = q @ prediction.support_embeddings[level].T  # (P, B)
                    match_logits.append(logits / self.match_temperature)
                    match_labels.append(episode)
        norm = max(num_pos, 1)
        heat = torch.stack(heat_terms).sum() / norm
        box = torch.stack(box_terms).sum() / norm if box_terms else heat.new_zeros(())
        losses = {"heatmap": heat, "box": box}
        total = heat + box
        if match_weight > 0 and match_logits:
            logits, labels = torch.cat(match_logits), torch.cat(match_labels)
            if class_ids is not None:  # same-class episodes are not negatives
                cls = class_ids.to(logits.device)
                same = (cls[labels][:, None] == cls[None, :]) & (
                    labels[:, None] != torch.arange(len(cls), device=logits.device)[None, :]
                )
                logits = logits.masked_fill(same, float("-inf"))
            losses["match"] = F.cross_entropy(logits, labels)
            total = total + match_weight * losses["match"]
        losses["loss"] = total
        return losses

    def _targets(
        self, level: int, shape: torch.Size, boxes: list[Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Heatmap target (B, 1, H, W), centre mask (B, H, W), box targets (P, 4) in mask order."""
        b, _, h, w = shape
        stride = self.strides[level]
        device = torch.device("cpu")
        target = torch.zeros(b, 1, h, w, device=device)
        mask = torch.zeros(b, h, w, dtype=torch.bool, device=device)
        box_target = torch.zeros(b, h, w, 4, device=device)
        ys = torch.arange(h, device=device, dtype=torch.float32)[:, None]
        xs = torch.arange(w, device=device, dtype=torch.float32)[None, :]
        for i, bx in enumerate(boxes):
            if len(bx) == 0:
                continue
            bx = bx[self.assign_level(bx) == level]
            for x0, y0, x1, y1 in bx.tolist():
                cx, cy = (x0 + x1) / 2 / stride, (y0 + y1) / 2 / stride
                bw, bh = max(x1 - x0, 1.0) / stride, max(y1 - y0, 1.0) / stride
                ix, iy = min(int(cx), w - 1), min(int(cy), h - 1)
                sx, sy = max(bw / 6, 0.5), max(bh / 6, 0.5)
                peak = torch.exp(-((xs - ix) ** 2) / (2 * sx**2) - (ys - iy) ** 2 / (2 * sy**2))
                target[i, 0] = torch.maximum(target[i, 0], peak)
                mask[i, iy, ix] = True
                box_target[i, iy, ix] = torch.tensor(
                    [cx - ix, cy - iy, math.log(bw), math.log(bh)], device=device
                )
        return target, mask, box_target[mask]

    # ------------------------------------------------------------------------------ decoding

    @torch.no_grad()
    def decode(
        self,
        prediction: Prediction,
        top_k: int = 100,
        nms_iou: float = 0.5,
        image_size: tuple[int, int] | None = None,
    ) -> list[tuple[Tensor, Tensor]]:
        """Scored boxes per image: a list of ``(boxes (N, 4) xyxy pixels, scores (N,))``."""
        per_level = []
        for level, out in enumerate(prediction.levels):
            stride = self.strides[level]
            heat = out.heatmap.sigmoid()
            peaks = heat == F.max_pool2d(heat, 3, stride=1, padding=1)
            scores = (heat * peaks).flatten(1)  # (B, H·W)
            b, _, h, w = heat.shape
            k = min(top_k, h * w)
            top, idx = scores.topk(k, dim=1)
            ys, xs = (idx // w).float(), (idx % w).float()
            reg = out.box.flatten(2).gather(2, idx[:, None].expand(b, 4, k))  # (B, 4, k)
            cx = (xs + reg[:, 0]) * stride
            cy = (ys + reg[:, 1]) * stride
            bw = reg[:, 2].clamp(max=8).exp() * stride
            bh = reg[:, 3].clamp(max=8).exp() * stride
            boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=2)
            per_level.append((boxes, top))
        all_boxes = torch.cat([p[0] for p in per_level], dim=1)  # (B, L·k, 4)
        all_scores = torch.cat([p[1] for p in per_level], dim=1)
        if image_size is not None:
            hh, ww = image_size
            all_boxes[..., 0::2] = all_boxes[..., 0::2].clamp(0, ww)
            all_boxes[..., 1::2] = all_boxes[..., 1::2].clamp(0, hh)
        results = []
        for boxes, scores in zip(all_boxes, all_scores, strict=True):
            keep = scores > 1e-3
            boxes, scores = boxes[keep], scores[keep]
            order = scores.argsort(descending=True)[: 4 * top_k]
            boxes, scores = boxes[order], scores[order]
            kept = nms(boxes, scores, nms_iou)[:top_k]
            results.append((boxes[kept], scores[kept]))
        return results


def _focal_loss(logits: Tensor, target: Tensor, alpha: float = 2.0, beta: float = 4.0) -> Tensor:
    """CenterNet's penalty-reduced focal loss, summed (normalised by the caller)."""
    p = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    pos_loss = -((1 - p) ** alpha) * torch.log(p) * pos
    neg_loss = -((1 - target) ** beta) * (p**alpha) * torch.log(1 - p) * (1 - pos)
    return pos_loss.sum() + neg_loss.sum()

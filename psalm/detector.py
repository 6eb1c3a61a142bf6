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

How the support reaches the prediction:

- Through the fusion module (CHEAF or PSALM), always.
- With ``support_in_head``, also through a similarity map between the query's and the support's
  embeddings, which the head sees as one more input channel: a cosine with one pooled support
  vector (``head_similarity="prototype"``, as in the report's source project), or a normalised
  cross-correlation with the support's embedded map, the support resized per level to that
  level's object size (``"template"``).
- ``match_on`` says which maps are embedded for that match. ``"fused"`` (the default): a 1×1
  projection of the fusion module's output per level, so the match, and with it the answer,
  depends on the fusion (its pyramid, its convolutions, its support path). With the template
  similarity the support crop goes through the same backbone and fusion (fused with its own
  episode's support) and the same projection: both sides of the correlation are the same
  function, as in a Siamese matcher. ``"backbone"``: a 1×1 projection of the backbone's maps,
  the detector before fusion-path matching existed; the fusion then only feeds the head's
  class-agnostic input, and the studies' ablations cannot move the match.
- With ``similarity_gate``, the heatmap is P(glyph) × P(match): the head's probability times
  the similarity map read as a probability (``similarity_logit``), which ``similarity_weight``
  (in ``loss``) trains with the heatmap's focal loss. The project's configs use the template
  map with the gate (conf/model): on the glyph benchmark it is what made the prediction depend
  on the support within a few hundred steps. As an input channel alone, the similarity was
  ignored even where it told the classes apart, and a wrong-class support scored as well as the
  right one.

An optional matching loss (``match_weight``) trains the embeddings contrastively: each target's
query embedding must be nearer its own episode's pooled support embedding than the others'.

Support modes (the report's test 3, in its two meanings):
- ``"none"`` passes ``support_features=None`` to the fusion module: neutral modulation, every
  stage still runs, only the support's signal is removed;
- ``"bypass"`` replaces the fusion by its query-only path (``fusion.query_only``), as the report's
  authors implement ``support_features=None``: pyramid and attention are skipped.
Both apply to every fusion call, the template's included. With ``match_on="backbone"`` the head's
similarity map still sees the support through the backbone. Evaluation's ``shuffled`` mode, a
control, gives every query another class's supports, which changes every path.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from psalm.boxes import nms
from psalm.options import (  # defined without torch; re-exported here
    HEAD_SIMILARITIES,
    LEVEL_SIZES,
    MATCH_ON,
    STRIDES,
    SUPPORT_MODES,
    template_map_cells,
)


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
    """A small CNN giving P2..P5 (strides 4, 8, 16, 32) with ``channels`` widths.

    ``standardize``: each image is shifted to zero mean per channel and scaled to unit standard
    deviation before the first conv. Canvases and supports draw their colours, brightness and
    polarity independently, so only the shape carries over; without this the first layers spend
    the short budgets on colour and brightness before shape features appear.
    """

    def __init__(
        self, channels: Sequence[int] = (32, 64, 128, 256), standardize: bool = False
    ) -> None:
        super().__init__()
        self.standardize = standardize
        c2 = channels[0]
        self.stem = nn.Sequential(
            _conv_block(3, c2 // 2, stride=2), _conv_block(c2 // 2, c2, stride=2), ResidualBlock(c2)
        )
        self.stages = nn.ModuleList(
            nn.Sequential(_conv_block(cin, cout, stride=2), ResidualBlock(cout))
            for cin, cout in zip(channels[:-1], channels[1:], strict=True)
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        if self.standardize:
            x = x - x.mean(dim=(2, 3), keepdim=True)
            x = x / (x.std(dim=(1, 2, 3), keepdim=True) + 1e-3)
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
    similarities: list[Tensor] | None = None  # per level (B, 1, H, W) if support_in_head
    # the template similarity's two sides, for the template contrast: per level the embedded
    # query maps (B, D, H, W) and the support's template, averaged over the K shots (B, D, t, t)
    matched_maps: list[Tensor] | None = None
    templates: list[Tensor] | None = None


class FewShotDetector(nn.Module):
    """Detects the instances of the support's class in the query image."""

    def __init__(
        self,
        fusion: nn.Module,
        backbone_channels: Sequence[int] = (32, 64, 128, 256),
        fused_channels: Sequence[int] = (128, 256, 512, 512),
        head_channels: int = 64,
        level_sizes: Sequence[float] = LEVEL_SIZES,
        support_in_head: bool = False,
        embed_dim: int = 64,
        match_temperature: float = 0.1,
        standardize_inputs: bool = False,
        head_similarity: str = "prototype",
        template_sides: Sequence[int] = (28, 48, 80, 80),
        template_cells: Sequence[int] = (7, 5, 5, 1),
        similarity_gate: bool = False,
        match_on: str = "fused",
    ) -> None:
        super().__init__()
        if match_on not in MATCH_ON:
            raise ValueError(f"match_on must be one of {MATCH_ON}, got {match_on!r}")
        self.match_on = match_on
        self.backbone = Backbone(backbone_channels, standardize=standardize_inputs)
        self.fusion = fusion
        # whether the fusion can compute a subset of its levels (``output_levels``, ours can)
        self._partial = "output_levels" in inspect.signature(fusion.forward).parameters
        self.strides = STRIDES
        self.level_sizes = tuple(float(s) for s in level_sizes)
        self.support_in_head = support_in_head
        self.match_temperature = match_temperature
        if head_similarity not in HEAD_SIMILARITIES:
            raise ValueError(
                f"head_similarity must be one of {HEAD_SIMILARITIES}, got {head_similarity!r}"
            )
        # "template" (with support_in_head): the head's similarity map is a normalised
        # cross-correlation of the query's embedding map with the support's embedding map, per
        # level, instead of a cosine with one pooled vector. The support crop is resized per
        # level (``template_sides``) and its map pooled to ``template_cells`` cells (odd, so
        # that the window has a centre): the same backbone stage then sees the same glyph at
        # about the same scale on both sides, and the comparison keeps the glyph's layout.
        # Such a Siamese correlation tells glyphs apart before the features have learnt much,
        # where a pooled prototype needs features that already encode the class.
        # Scale: a support glyph filling a fraction f of the crop spans f × cells cells of the
        # template, so it matches query glyphs of about stride × f × cells pixels. With the
        # benchmark's f ≈ 0.7 the defaults match 20, 28 and 56 px on P2..P4, whose objects there
        # are 16-23, 23-45 and 45-64 px (``level_sizes``). The earlier (24, 48, 64, 64) sides and
        # (5, 5, 3, 1) cells matched 14, 28 and 34 px, too small on P2 and P4: fixing the scale
        # raised PSALM's val nAP50 after 600 steps from 0.247 to 0.318 (seed 0, README).
        # A one-cell template (the default on P5) is zero once centred, so that level's
        # similarity is 0 everywhere and, with the gate, its scores are capped at
        # σ(similarity_logit's bias): about 0.007 in a trained default run. No benchmark glyph
        # (16-64 px) is assigned to P5; data with objects above ~90 px (on the canvas) needs
        # 3 cells there (``template_cells=[7, 5, 5, 3]``; README, "Your own data").
        self.head_similarity = head_similarity
        # similarity_gate (with support_in_head): the heatmap is P(glyph) × P(match), the head's
        # probability times the similarity map read as a probability (``similarity_logit``).
        # As one more input channel the similarity is ignored: the head first learns to find
        # every glyph, which all but minimises the loss, and the support never matters. As a
        # factor, a support that does not match lowers the score whatever the head does.
        if similarity_gate and not support_in_head:
            raise ValueError("similarity_gate needs support_in_head")
        self.similarity_gate = similarity_gate
        self.template_sides = tuple(int(t) for t in template_sides)
        self.template_cells = tuple(int(k) for k in template_cells)
        if len(self.template_sides) != 4 or len(self.template_cells) != 4:
            raise ValueError(
                f"template_sides and template_cells need one entry per level (4), got "
                f"{template_sides} and {template_cells}"
            )
        for level, (side, cells) in enumerate(
            zip(self.template_sides, self.template_cells, strict=True)
        ):
            if cells < 1 or cells % 2 == 0:
                raise ValueError(f"template_cells must be odd and positive, got {template_cells}")
            if cells > template_map_cells(side, level):
                raise ValueError(
                    f"template_cells[{level}]={cells} exceeds the {side} px template's map on "
                    f"P{level + 2} ({template_map_cells(side, level)} cells at stride "
                    f"{self.strides[level]}): raise template_sides[{level}]"
                )
        extra = 1 if support_in_head else 0
        self.head_inputs = nn.ModuleList(
            nn.Conv2d(c + extra, head_channels, 1) for c in fused_channels
        )
        # Siamese embeddings of the query maps (the fusion's output or the backbone's, per
        # ``match_on``) and support prototypes, per level: trained by the matching loss, and the
        # head's similarity map if support_in_head. The support's embedding is one vector from
        # all its levels pooled (a glyph's size in a support crop is fixed while query objects
        # span the levels, so per-level support prototypes would compare different scales); the
        # query's is per level and position. Only the embedding ``match_on`` uses is built, so
        # that "backbone" initialises exactly as the detector did before "fused" existed.
        matched_channels = fused_channels if match_on == "fused" else backbone_channels
        self.embed_query = nn.ModuleList(nn.Conv2d(c, embed_dim, 1) for c in matched_channels)
        self.embed_support = nn.Linear(sum(backbone_channels), embed_dim)
        # The similarity loss reads the similarity map as heatmap logits (scale, bias): it
        # trains the embeddings to peak on the support's class and not on the canvas's other
        # glyphs, which are the negatives that matter, where the matching loss only contrasts
        # the other episodes' supports.
        self.similarity_logit = nn.Parameter(torch.tensor([10.0, -5.0]))
        self.tower = nn.Sequential(
            _conv_block(head_channels, head_channels), _conv_block(head_channels, head_channels)
        )
        self.heatmap = nn.Conv2d(head_channels, 1, 3, padding=1)
        self.box = nn.Conv2d(head_channels, 4, 3, padding=1)
        nn.init.constant_(self.heatmap.bias, -math.log((1 - 0.01) / 0.01))  # prior 0.01

    def forward(
        self,
        images: Tensor,
        supports: Tensor,
        support_mode: str = "normal",
        query_index: Tensor | None = None,
    ) -> Prediction:
        """images (N, 3, H, W); supports (B, K, 3, S, S); ``support_mode`` one of
        ``SUPPORT_MODES``; ``query_index`` (B,): which image each episode queries (default: image
        b for episode b), so that several episodes on one canvas run the query backbone once."""
        query = self.backbone(images)
        if query_index is not None:
            query = [f[query_index] for f in query]
        return self.predict(query, self.support_features(supports, support_mode), support_mode)

    def fuse(
        self,
        query: list[Tensor],
        support: list[Tensor],
        support_mode: str,
        output_levels: Sequence[int] | None = None,
    ) -> list[Tensor | None]:
        """The fusion module on query maps, in a support mode (see the module docstring).
        ``output_levels``: the level positions to compute (default all; the others are None)."""
        if support_mode not in SUPPORT_MODES:
            raise ValueError(f"support_mode must be one of {SUPPORT_MODES}, got {support_mode!r}")
        # a fusion module with only the report's interface computes every level
        subset = (
            {} if output_levels is None or not self._partial else {"output_levels": output_levels}
        )
        if support_mode == "bypass":
            return self.fusion.query_only(query, **subset)
        return self.fusion(query, None if support_mode == "none" else support, **subset)

    def support_features(self, supports: Tensor, support_mode: str = "normal") -> list[Tensor]:
        """Features of K-shot supports (B, K, 3, S, S): per level the backbone's maps
        (B, K, C, h, w). With the template similarity, four more entries follow: per level the
        embedded template (B, K, D, t, t) that ``predict`` correlates with the query. With
        ``match_on="fused"`` each crop's maps are fused (in ``support_mode``) with its episode's
        K-shot support before the embedding, as the query's are."""
        b, k = supports.shape[:2]
        flat = supports.flatten(0, 1)
        maps = self.backbone(flat)
        out = [f.reshape(b, k, *f.shape[1:]) for f in maps]
        if self.support_in_head and self.head_similarity == "template":
            # each crop is fused with its own episode's support: (B·K, C) prototypes per level,
            # or the (B·K, K, C, h, w) maps for a fusion that takes the support as tokens
            if getattr(self.fusion, "support_tokens", False):
                own = [f.repeat_interleave(k, dim=0) for f in out]
            else:
                own = [f.mean(dim=(1, 3, 4)).repeat_interleave(k, dim=0) for f in out]
            # the levels each template size serves: a size's fused maps are read on those only
            levels_of: dict[int, list[int]] = {}
            for level, side in enumerate(self.template_sides):
                levels_of.setdefault(side, []).append(level)
            resized: dict[int, list[Tensor]] = {flat.shape[-1]: maps}
            matched: dict[int, list[Tensor | None]] = {}
            for level, (side, cells) in enumerate(
                zip(self.template_sides, self.template_cells, strict=True)
            ):
                if side not in resized:
                    x = F.interpolate(flat, size=(side, side), mode="bilinear", antialias=True)
                    resized[side] = self.backbone(x)
                if side not in matched:
                    matched[side] = (
                        self.fuse(resized[side], own, support_mode, output_levels=levels_of[side])
                        if self.match_on == "fused"
                        else resized[side]
                    )
                t = F.adaptive_avg_pool2d(self.embed_query[level](matched[side][level]), cells)
                out.append(t.reshape(b, k, *t.shape[1:]))
        return out

    def predict(
        self, query: list[Tensor], support: list[Tensor], support_mode: str = "normal"
    ) -> Prediction:
        """Fusion and head on backbone maps (``forward`` without the backbone): evaluation
        computes each image's and each class's maps once and reuses them for every query.
        ``support`` is what ``support_features`` returned, computed in the same mode."""
        support, templates = support[: len(query)], support[len(query) :]
        fused = self.fuse(query, support, support_mode)
        matched = fused if self.match_on == "fused" else query
        embedded = [e(q) for e, q in zip(self.embed_query, matched, strict=True)]
        q_emb = [F.normalize(e, dim=1) for e in embedded]
        pooled = torch.cat([s.mean(dim=(1, 3, 4)) for s in support], dim=1)  # (B, ΣC)
        s_emb = [F.normalize(self.embed_support(pooled), dim=1)] * len(query)
        levels, similarities, mean_templates = [], [], []
        for i, f in enumerate(fused):
            if self.support_in_head and templates:
                mean_templates.append(templates[i].mean(dim=1))
                similarity = _correlate(embedded[i], mean_templates[i])
            elif self.support_in_head:
                similarity = torch.einsum("bdhw,bd->bhw", q_emb[i], s_emb[i])[:, None]
            if self.support_in_head:
                f = torch.cat([f, similarity], dim=1)
                similarities.append(similarity)
            h = self.tower(self.head_inputs[i](f))
            heat = self.heatmap(h)
            if self.similarity_gate:
                scale, bias = self.similarity_logit
                log_p = F.logsigmoid(heat) + F.logsigmoid(similarity * scale + bias)
                log_p = log_p.clamp(max=-1e-6)
                heat = log_p - torch.log(-torch.expm1(log_p))  # logit of the product
            levels.append(LevelOutput(heat, self.box(h)))
        return Prediction(
            levels,
            q_emb,
            s_emb,
            similarities or None,
            embedded if mean_templates else None,
            mean_templates or None,
        )

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
        similarity_weight: float = 0.0,
        contrast_weight: float = 0.0,
    ) -> dict[str, Tensor]:
        """Focal loss on the Gaussian heatmaps, L1 on centre offsets and log sizes, and (with
        ``match_weight`` > 0) the matching loss: each target's query embedding must be nearer its
        own episode's support embedding than the other episodes' (InfoNCE over the batch;
        episodes of the same class are not counted as negatives); and (with ``similarity_weight``
        > 0 and ``support_in_head``) the similarity loss: the focal loss on the similarity map
        read as heatmap logits; and (with ``contrast_weight`` > 0 and the template similarity) the
        template contrast: at each target centre, the similarity map's value (the cosine with its
        own episode's template) must exceed the cosines of the same window with the other
        episodes' templates (InfoNCE over the batch, same-class episodes left out). The
        similarity loss compares the template with other places of its own canvas; the
        contrast compares the glyph with other classes' templates, the confusion that costs
        the AP (docs/results.md, "where the AP is lost")."""
        heat_terms, box_terms = [], []
        num_pos = sum(len(b) for b in boxes)
        boxes = [b.cpu() for b in boxes]  # targets are built on the CPU, then moved once
        outputs = prediction.levels
        match_logits, match_labels = [], []
        contrast_logits, contrast_labels = [], []
        sim_terms = []
        for level, out in enumerate(outputs):
            target, mask, box_target = (
                t.to(out.heatmap.device) for t in self._targets(level, out.heatmap.shape, boxes)
            )
            heat_terms.append(_focal_loss(out.heatmap, target))
            if similarity_weight > 0 and prediction.similarities is not None:
                scale, bias = self.similarity_logit
                logits = prediction.similarities[level] * scale + bias
                sim_terms.append(_focal_loss(logits, target))
            if mask.any():
                pred = out.box.permute(0, 2, 3, 1)[mask]  # (P, 4)
                box_terms.append(F.l1_loss(pred, box_target, reduction="sum"))
                if match_weight > 0:
                    episode = mask.nonzero()[:, 0]  # (P,) which episode each centre belongs to
                    q = prediction.query_embeddings[level].permute(0, 2, 3, 1)[mask]  # (P, D)
                    logits = q @ prediction.support_embeddings[level].T  # (P, B)
                    match_logits.append(logits / self.match_temperature)
                    match_labels.append(episode)
                if contrast_weight > 0 and prediction.templates is not None:
                    cosines = _window_cosines(
                        prediction.matched_maps[level], mask, prediction.templates[level]
                    )
                    contrast_logits.append(cosines / self.match_temperature)
                    contrast_labels.append(mask.nonzero()[:, 0])
        norm = max(num_pos, 1)
        heat = torch.stack(heat_terms).sum() / norm
        box = torch.stack(box_terms).sum() / norm if box_terms else heat.new_zeros(())
        losses = {"heatmap": heat, "box": box}
        total = heat + box
        if match_weight > 0 and match_logits:
            losses["match"] = _episode_nce(match_logits, match_labels, class_ids)
            total = total + match_weight * losses["match"]
        if contrast_weight > 0 and contrast_logits:
            losses["contrast"] = _episode_nce(contrast_logits, contrast_labels, class_ids)
            total = total + contrast_weight * losses["contrast"]
        if sim_terms:
            losses["similarity"] = torch.stack(sim_terms).sum() / norm
            total = total + similarity_weight * losses["similarity"]
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


def _episode_nce(logits: list[Tensor], labels: list[Tensor], class_ids: Tensor | None) -> Tensor:
    """InfoNCE of (P, B) logits whose label is each row's episode; the other episodes of the
    same class are not negatives (their columns are masked)."""
    logits, labels = torch.cat(logits), torch.cat(labels)
    if class_ids is not None:
        cls = class_ids.to(logits.device)
        same = (cls[labels][:, None] == cls[None, :]) & (
            labels[:, None] != torch.arange(len(cls), device=logits.device)[None, :]
        )
        logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, labels)


def _window_cosines(query: Tensor, mask: Tensor, templates: Tensor) -> Tensor:
    """(P, B): the cosine between the t×t window of query maps (B, D, H, W) centred on each of
    the P cells of ``mask`` (B, H, W) and every episode's template (B, D, t, t), centred and
    zero-padded as ``_correlate`` does, so that column ``e`` of a row of episode ``e`` is the
    similarity map's value at that cell."""
    t = templates.shape[-1]
    query = query - query.mean(dim=(2, 3), keepdim=True)
    templates = templates - templates.mean(dim=(2, 3), keepdim=True)
    padded = F.pad(query, (t // 2,) * 4)
    episode, y, x = mask.nonzero().unbind(1)
    offsets = torch.arange(t, device=query.device)
    rows, cols = (y[:, None] + offsets)[:, :, None], (x[:, None] + offsets)[:, None, :]
    windows = padded[episode[:, None, None], :, rows, cols]  # (P, t, t, D)
    windows = F.normalize(windows.permute(0, 3, 1, 2).flatten(1), dim=1)
    return windows @ F.normalize(templates.flatten(1), dim=1).T


def _correlate(query: Tensor, template: Tensor) -> Tensor:
    """Normalised cross-correlation (B, 1, H, W) of query maps (B, D, H, W) with one template
    (B, D, t, t) each: the cosine between the template and the t×t window at each position."""
    b, d, h, w = query.shape
    t = template.shape[-1]
    # Centred per map: ReLU features share a large common direction that would make every
    # window look alike; what is left compares the glyph's layout.
    query = query - query.mean(dim=(2, 3), keepdim=True)
    template = template - template.mean(dim=(2, 3), keepdim=True)
    pad = t // 2
    padded = F.pad(query, (pad, pad, pad, pad))
    hp, wp = padded.shape[-2:]
    # One batched matmul gives, at every padded position, the dot product with each of the
    # template's t² cells; the correlation sums them at the cells' offsets. (A grouped conv
    # computes the same, several times slower on the CPU, forward and backward.)
    cells = torch.bmm(template.flatten(2).transpose(1, 2), padded.flatten(2))
    dot = _ShiftedSum.apply(cells.view(b, t * t, hp, wp), t, h, w)
    energy = F.avg_pool2d(query.pow(2).sum(1, keepdim=True), t, 1, pad, count_include_pad=True)
    norm = (energy * t * t).sqrt() * template.flatten(1).norm(dim=1).view(b, 1, 1, 1)
    return (dot[:, None] / norm.clamp(min=1e-6)).clamp(-1, 1)


class _ShiftedSum(torch.autograd.Function):
    """(B, t², H + t - 1, W + t - 1) → (B, H, W): the sum over the t×t cells of cell (i, j)'s
    map read at offset (i, j). Autograd of the same sum written with slices keeps a zero-filled
    gradient of the whole input per cell and adds them up (t² fills and adds of the input's
    size); here the backward fills once and copies each cell's window: the same values, forward
    and backward, and a default training step 2.6 % faster on one CPU thread (both models)."""

    @staticmethod
    def forward(ctx, cells: Tensor, t: int, h: int, w: int) -> Tensor:
        ctx.t, ctx.shape = t, cells.shape
        return sum(cells[:, i * t + j, i : i + h, j : j + w] for i in range(t) for j in range(t))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        t, (_, _, hp, wp) = ctx.t, ctx.shape
        h, w = hp - t + 1, wp - t + 1
        cells = grad.new_zeros(ctx.shape)
        for i in range(t):
            for j in range(t):
                cells[:, i * t + j, i : i + h, j : j + w] = grad
        return cells, None, None, None


def _focal_loss(logits: Tensor, target: Tensor, alpha: float = 2.0, beta: float = 4.0) -> Tensor:
    """CenterNet's penalty-reduced focal loss, summed (normalised by the caller)."""
    p = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    pos_loss = -((1 - p) ** alpha) * torch.log(p) * pos
    neg_loss = -((1 - target) ** beta) * (p**alpha) * torch.log(1 - p) * (1 - pos)
    return pos_loss.sum() + neg_loss.sum()

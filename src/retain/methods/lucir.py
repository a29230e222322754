"""LUCIR: cosine-normalised classifier, less-forget constraint and inter-class separation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retain.core.buffers import embed
from retain.core.distill import feature_cosine_distillation
from retain.data.benchmark import Task
from retain.methods._exemplars import ExemplarMethod
from retain.methods.base import Batch, BenchmarkInfo, register
from retain.models.continual import ContinualModel


class CosineHead(nn.Module):
    """``scale * <w_c / |w_c|, f / |f|>`` for every class ``c`` (LUCIR Eq. 4): logits bounded
    by ``|scale|``. ``scale`` is a parameter shared by all heads of a model (one classifier)."""

    def __init__(self, in_features: int, out_features: int, scale: nn.Parameter) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        self.scale = scale

    def cosine(self, features: Tensor) -> Tensor:
        return F.linear(F.normalize(features, dim=1), F.normalize(self.weight, dim=1))

    def forward(self, features: Tensor) -> Tensor:
        return self.scale * self.cosine(features)


@register
class LUCIR(ExemplarMethod):
    """LUCIR, Hou et al. 2019, "Learning a Unified Classifier Incrementally via Rebalancing".

    ``setup`` replaces the model's heads by cosine-normalised heads sharing one learnable scale
    ``sigma`` (Eq. 4; the paper initialises it to 1). Training task ``t`` uses its data plus
    herding exemplars, and for ``t > 0`` (Eq. 7):

        L = L_ce + lambda * L_dis^G + lambda_mr * L_mr

    * ``L_ce``: cross-entropy of ``sigma * cos`` over all classes seen.
    * ``L_dis^G`` (less-forget constraint, Eq. 6): ``1 - cos(f*(x), f(x))`` between the old and
      new backbone features, with the adaptive weight ``lambda = lambda_base * sqrt(|C_o| / |C_n|)``
      (old and new class counts).
    * ``L_mr`` (margin ranking, Eq. 8): for every sample of an old class, the cosine of its
      ground-truth class must exceed each of its ``K`` highest new-class cosines by ``margin``:
      ``mean max(margin - cos_gt + cos_k, 0)``.

    As in the official code, the new classes' weights are imprinted (normalised mean feature
    of each new class) at the start of a task and the old classes' weights are then frozen:
    the optimiser holds the backbone and the current head (with ``sigma``).

    Args:
        memory_size: total exemplars, or per class with ``per_class``.
        per_class: see ``memory_size``.
        lambda_base: base weight of the less-forget constraint (paper: 5).
        margin: margin of the ranking loss (paper: 0.5).
        k: hard negatives per sample (paper: 2).
        lambda_mr: weight of the ranking loss (paper: 1).
        scale_init: initial ``sigma`` (paper: 1).
        imprint: imprint new classes' weights before training a task.
        selection: ``"herding"`` or ``"random"`` exemplars.

    Deviations and choices: docs/methods/lucir.md
    """

    name = "lucir"

    def __init__(
        self,
        memory_size: int = 2000,
        per_class: bool = False,
        lambda_base: float = 5.0,
        margin: float = 0.5,
        k: int = 2,
        lambda_mr: float = 1.0,
        scale_init: float = 1.0,
        imprint: bool = True,
        selection: str = "herding",
    ) -> None:
        super().__init__(memory_size, per_class, selection)
        self.lambda_base = float(lambda_base)
        self.margin = float(margin)
        self.k = int(k)
        self.lambda_mr = float(lambda_mr)
        self.scale_init = float(scale_init)
        self.imprint = bool(imprint)

    def setup(self, model: ContinualModel, info: BenchmarkInfo) -> None:
        super().setup(model, info)
        if isinstance(model.heads[0], CosineHead):  # already adapted (a second fit)
            return
        d = int(model.backbone.out_features)
        scale = nn.Parameter(torch.tensor(self.scale_init))
        model.heads = nn.ModuleList(CosineHead(d, c, scale) for c in model.classes_per_task)

    @property
    def scale(self) -> nn.Parameter:
        assert self.model is not None
        return self.model.heads[0].scale

    def extra_metrics(self) -> dict[str, float]:
        """The learned scale ``sigma`` of the cosine classifier."""
        return {"scale": round(float(self.scale.detach()), 6)}

    def trainable_parameters(self, task: Task) -> list[nn.Parameter]:
        assert self.model is not None
        # backbone and the current head (its parameters include the shared scale)
        return list(self.model.backbone.parameters()) + list(self.model.heads[task.id].parameters())

    def before_task(self, task: Task) -> None:
        super().before_task(task)
        if self.imprint and task.id > 0:
            self.imprint_weights(task)

    @torch.no_grad()
    def imprint_weights(self, task: Task) -> None:
        """New class weights = normalised mean of the class's normalised features, scaled to
        the mean norm of the old class weights (Hou et al., Section 4.1)."""
        assert self.model is not None
        feats = F.normalize(embed(self.model, task.x_train), dim=1)
        sums = feats.new_zeros((task.n_classes, feats.shape[1])).index_add_(0, task.y_train, feats)
        means = F.normalize(sums, dim=1)
        old_norm = torch.cat([h.weight.norm(dim=1) for h in self.model.heads[: task.id]]).mean()
        self.model.heads[task.id].weight.copy_(means * old_norm)

    def loss(self, batch: Batch, task: Task) -> Tensor:
        assert self.model is not None
        feats = self.model.features(batch.x)
        logits = self.model.logits(feats, upto=self.current_task + 1)
        target = self.global_targets(batch)
        loss = F.cross_entropy(logits, target)
        n_old, n_seen = self.n_old, self.n_seen
        if self.old_model is None or n_old == 0:
            return loss
        with torch.no_grad():
            old_feats = self.old_model.features(batch.x)
        lam = self.lambda_base * math.sqrt(n_old / (n_seen - n_old))
        loss = loss + lam * feature_cosine_distillation(feats, old_feats)
        if self.lambda_mr > 0:
            cos = logits / self.scale  # the un-scaled cosines
            loss = loss + self.lambda_mr * self.margin_ranking(cos, target, n_old)
        return loss

    def margin_ranking(self, cos: Tensor, target: Tensor, n_old: int) -> Tensor:
        """``mean max(margin - cos_gt + cos_k, 0)`` over the old-class samples and their ``K``
        hardest new classes (zero when the batch has no old-class sample)."""
        old = target < n_old
        if not bool(old.any()):
            return cos.new_zeros(())
        c = cos[old]
        gt = c.gather(1, target[old].unsqueeze(1))
        k = min(self.k, c.shape[1] - n_old)
        hard = c[:, n_old:].topk(k, dim=1).values
        return F.margin_ranking_loss(
            gt.expand_as(hard).reshape(-1),
            hard.reshape(-1),
            torch.ones(hard.numel()),
            margin=self.margin,
        )

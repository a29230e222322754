"""Distillation losses, in one place: every method that matches a new model to an old one
(LwF, iCaRL, DER, LUCIR, ...) takes its loss from here.

All functions reduce to a scalar (mean over the batch) and never detach the student; the
teacher is treated as a constant (it is detached here, so callers need not remember to).

* :func:`kd_cross_entropy` -- Li & Hoiem (2017), LwF Eq. 2: cross-entropy between
  temperature-softened teacher and student distributions. With ``T = 1`` it is a soft-label
  cross-entropy; its minimum over the student is the teacher's entropy, reached when the
  student equals the teacher.
* :func:`kd_kl_divergence` -- Hinton, Vinyals & Dean (2015): ``T^2 * KL(p_teacher || p_student)``
  at temperature ``T``; the same gradient as :func:`kd_cross_entropy` up to the ``T^2`` factor,
  and zero when student equals teacher.
* :func:`logit_mse` -- DER (Buzzega et al., 2020): mean squared error between logits.
* :func:`sigmoid_distillation` -- iCaRL (Rebuffi et al., 2017): binary cross-entropy of the
  student's logits against the teacher's sigmoid outputs.
* :func:`feature_cosine_distillation` -- LUCIR's less-forget constraint (Hou et al., 2019):
  ``1 - cos(f_student, f_teacher)`` on (normalised) features.
"""

from __future__ import annotations

import copy
from typing import TypeVar

import torch.nn.functional as F
from torch import Tensor, nn

M = TypeVar("M", bound=nn.Module)


def frozen_copy(model: M) -> M:
    """A copy of ``model`` in eval mode with no gradients: the teacher of distillation (LwF,
    iCaRL, BiC, LUCIR) or a finished expert (One)."""
    old = copy.deepcopy(model).eval()
    for p in old.parameters():
        p.requires_grad_(False)
    return old


def kd_cross_entropy(student: Tensor, teacher: Tensor, temperature: float = 2.0) -> Tensor:
    """``mean_n -sum_k softmax(teacher/T)_k * log_softmax(student/T)_k`` (LwF, T = 2).

    Li & Hoiem write the softened probabilities as ``y^(1/T) / sum_j y_j^(1/T)``, which is
    ``softmax(logits / T)``; working with logits and ``log_softmax`` needs no epsilon
    (FACIL adds 1e-5 to the probabilities; we do not). No ``T^2`` factor, as in LwF.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    target = F.softmax(teacher.detach() / temperature, dim=-1)
    return -(target * F.log_softmax(student / temperature, dim=-1)).sum(-1).mean()


def kd_kl_divergence(
    student: Tensor, teacher: Tensor, temperature: float = 2.0, scale: bool = True
) -> Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, mean over the batch (Hinton).

    ``scale=False`` drops the ``T^2`` factor that keeps gradient magnitudes comparable across
    temperatures."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    log_p_t = F.log_softmax(teacher.detach() / temperature, dim=-1)
    log_p_s = F.log_softmax(student / temperature, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * temperature**2 if scale else kl


def logit_mse(student: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error between logits, averaged over every element (DER's alpha term).

    ``mask`` (bool, broadcastable to the logits) restricts the mean to the selected elements,
    e.g. the outputs that existed when a replayed sample's logits were stored."""
    if mask is None:
        return F.mse_loss(student, target.detach())
    mask = mask.expand_as(student)
    sq = (student - target.detach()).square() * mask
    return sq.sum() / mask.sum().clamp_min(1)


def sigmoid_distillation(student: Tensor, teacher: Tensor) -> Tensor:
    """Binary cross-entropy of ``student`` logits against ``sigmoid(teacher)`` targets, mean
    over batch and outputs (iCaRL's distillation on the old classes)."""
    return F.binary_cross_entropy_with_logits(student, teacher.detach().sigmoid())


def feature_cosine_distillation(student: Tensor, teacher: Tensor) -> Tensor:
    """``mean_n (1 - cos(student_n, teacher_n))`` over feature vectors (LUCIR less-forget)."""
    return (1.0 - F.cosine_similarity(student, teacher.detach(), dim=-1)).mean()

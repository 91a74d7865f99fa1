"""Published distillers expressed as points of the space (weights / taus snapped to WEIGHTS / TEMPERATURES).

* ``kd`` -- Hinton et al. 2015: tau^2 KL(softmax(z_t/tau) || softmax(z_s/tau)). mdistiller's CIFAR setting is
  tau 4, KD weight 0.9 -> W = 1. Exact.
* ``dist`` -- DIST (Huang et al., NeurIPS 2022): tau^2 (beta inter + gamma intra) on softmax(z/tau). The
  authors' CIFAR-100 setting is beta = gamma = 2, tau = 4, i.e. W = 2 with our beta = gamma = 1 ``pearson``.
  Exact (up to the eps placement in the Pearson correlation).
* ``at`` -- Attention transfer (Zagoruyko & Komodakis 2017) compares L2-normalised channel-means of f^2; the
  space has no channel-mean op, so ``(pow2, norm_hw, no) + l2`` normalises each channel's f^2 map instead.
  Approximate. Published weight 1000 (mdistiller) -> W = 100, the largest member.
* ``fitnets`` -- FitNets (Romero et al. 2015): MSE between the 1x1-conv-aligned student map and the teacher
  map (the aligner is the regressor). Hint weight 100 (mdistiller) -> W = 100. Exact up to where the hint is
  taken.
* ``pkd`` -- PKD (Cao et al., NeurIPS 2022): MSE/2 between maps standardised per channel over (N, H, W) ==
  ``batchnorm`` + ``l2``; published loss weight 6 (x 1/2 = 3) -> nearest W = 2. Approximate weight.
* ``cwd`` -- Channel-wise distillation (Shu et al., ICCV 2021): tau^2 / (N C) sum KL over spatial softmaxes,
  tau = 4, published weight 3 -> W = 2. Exact form, approximate weight.
* ``wsld`` -- WSLD (Zhou et al., ICLR 2021): KD weighted per sample by 1 - exp(-CE_s / CE_t); tau 4 (CIFAR),
  alpha 2.25 -> W = 2. Our calibration rescales the weights to batch mean 1, which WSLD does not. Approximate.
"""

from __future__ import annotations

from types import MappingProxyType

from ._spec import DistillerSpec

KNOWN_DISTILLERS = MappingProxyType(
    {
        "at": DistillerSpec("feature", ("pow2", "norm_hw", "no"), "l2", "no", 100.0, 1.0),
        "cwd": DistillerSpec("feature", ("no", "softmax_hw", "no"), "kl", "no", 2.0, 4.0),
        "dist": DistillerSpec("logits", ("no", "softmax_c", "no"), "pearson", "no", 2.0, 4.0),
        "fitnets": DistillerSpec("feature", ("no", "no", "no"), "l2", "no", 100.0, 1.0),
        "kd": DistillerSpec("logits", ("no", "softmax_c", "no"), "kl", "no", 1.0, 4.0),
        "pkd": DistillerSpec("feature", ("batchnorm", "no", "no"), "l2", "no", 2.0, 1.0),
        "wsld": DistillerSpec("logits", ("no", "softmax_c", "no"), "kl", "focal", 2.0, 4.0),
    }
)
"""Name -> spec of published distillers (read-only mapping, sorted keys)."""

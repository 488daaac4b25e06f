"""The GAN losses of pix2pix on PatchGAN logits: binary cross-entropy, averaged over every patch.

Logits are raw discriminator outputs (B×1×h×w, any real value); the sigmoid lives inside
BCEWithLogits, which is numerically stable and safe under autocast. Results are float32 scalars.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _bce_to(logits: torch.Tensor, target: float) -> torch.Tensor:
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def discriminator_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """D's loss: ½[BCE(D(L, ab), 1) + BCE(D(L, G(L)), 0)], halved as in pix2pix so D learns slower than G.

    real_logits, fake_logits: B×1×h×w patch logits for real and generated colour. Returns
    (loss, loss_real, loss_fake), each a scalar; the two halves are returned for logging.
    """
    loss_real = _bce_to(real_logits, 1.0)
    loss_fake = _bce_to(fake_logits, 0.0)
    return 0.5 * (loss_real + loss_fake), loss_real, loss_fake


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """G's adversarial term: BCE(D(L, G(L)), 1), the non-saturating GAN loss. Scalar.

    fake_logits: B×1×h×w patch logits of generated colour. The caller weights it
    (`cfg.loss.adversarial_weight`) and adds `cfg.loss.l1_weight` · L1.
    """
    return _bce_to(fake_logits, 1.0)

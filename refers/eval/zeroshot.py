"""Zero-shot class scores from paired prompt sets (CheXzero's positive/negative pairing).

Each class has a set of positive prompts ("There is a right pleural effusion.") and a set of
negative ones ("No pleural effusion."). Each set's L2-normalised embeddings are averaged and
renormalised into one class vector; an image's score is the softmax over its two cosine
similarities divided by the model's contrast temperature, taken at the positive one:
``p = exp(s+ / tau) / (exp(s+ / tau) + exp(s- / tau)) = sigmoid((s+ - s-) / tau)``.
Swapping the two prompt sets gives ``1 - p``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def prompt_set_embedding(prompt_embeddings: torch.Tensor) -> torch.Tensor:
    """One vector for a prompt set: the mean of its normalised embeddings [K, D], renormalised: [D]."""
    if prompt_embeddings.dim() != 2 or prompt_embeddings.shape[0] == 0:
        raise ValueError(f"a prompt set needs at least one embedding [K, D], got {tuple(prompt_embeddings.shape)}")
    return F.normalize(F.normalize(prompt_embeddings.float(), dim=-1).mean(dim=0), dim=0)


def paired_prompt_probability(image_embeddings: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                              temperature: float) -> torch.Tensor:
    """``softmax([s+, s-] / tau)[0]`` per image.

    Args:
        image_embeddings: [N, D] (normalised here).
        positive, negative: the class's two prompt-set vectors [D] (:func:`prompt_set_embedding`).
        temperature: the contrast's tau (> 0).

    Returns:
        [N] float32 probabilities in (0, 1).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    images = F.normalize(image_embeddings.float(), dim=-1)
    logits = torch.stack([images @ positive.float(), images @ negative.float()], dim=1) / temperature
    return torch.softmax(logits, dim=1)[:, 0]

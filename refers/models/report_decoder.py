"""The report decoder: a small transformer decoder over the fused image memory (VirTex's head).

Word + position embeddings, LayerNorm and dropout; ``torch.nn.TransformerDecoderLayer`` layers
(post-norm in the recipe: one layer, width 1024, 16 heads, FFN 4096, GELU, dropout 0.1) attending
to the projected image memory under a causal mask; an output layer tied to the word embeddings.
"""

from __future__ import annotations

import torch
from torch import nn


class ReportDecoder(nn.Module):
    """Next-token scores for reports given an image memory, and report generation.

    Args:
        vocab_size: decoder vocabulary size.
        visual_dim: width D of the image memory.
        hidden: decoder width H.
        heads: attention heads.
        ffn: feed-forward width.
        layers: number of decoder layers.
        dropout: dropout of embeddings and layers.
        max_length: position embeddings (longest token sequence, [SOS] and [EOS] included).
        pad_id, sos_id, eos_id: special token ids.
        norm_first: pre-norm layers (plus a final LayerNorm) instead of the recipe's post-norm.
    """

    def __init__(
        self,
        vocab_size: int,
        visual_dim: int,
        hidden: int = 1024,
        heads: int = 16,
        ffn: int = 4096,
        layers: int = 1,
        dropout: float = 0.1,
        max_length: int = 100,
        pad_id: int = 4,
        sos_id: int = 1,
        eos_id: int = 2,
        norm_first: bool = False,
    ):
        super().__init__()
        self.max_length = max_length
        self.pad_id, self.sos_id, self.eos_id = pad_id, sos_id, eos_id
        self.visual_projection = nn.Linear(visual_dim, hidden)
        self.word_embedding = nn.Embedding(vocab_size, hidden, padding_idx=pad_id)
        self.position_embedding = nn.Embedding(max_length, hidden)
        self.embedding_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.embedding_dropout = nn.Dropout(dropout)
        layer = nn.TransformerDecoderLayer(
            hidden, heads, ffn, dropout, activation="gelu", batch_first=True, norm_first=norm_first
        )
        self.transformer = nn.TransformerDecoder(layer, layers, norm=nn.LayerNorm(hidden) if norm_first else None)
        self.output = nn.Linear(hidden, vocab_size)
        self.apply(self._init_weights)
        self.output.weight = self.word_embedding.weight  # tied (after init: keeps the zero padding row)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """N(0, 0.02) weights (biases keep their defaults), zero padding embedding (as VirTex)."""
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=0.02)
        elif isinstance(module, nn.MultiheadAttention):
            module.in_proj_weight.data.normal_(mean=0.0, std=0.02)
            module.out_proj.weight.data.normal_(mean=0.0, std=0.02)
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=0.02)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()

    def forward(self, memory: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token scores.

        Args:
            memory: [B, M, D] fused image tokens.
            tokens: [B, T] input ids (``[SOS] ...``), T <= ``max_length``.
            token_mask: [B, T] True for real tokens (None: all real).

        Returns:
            logits [B, T, vocab_size].
        """
        length = tokens.shape[1]
        if length > self.max_length:
            raise ValueError(f"{length} tokens exceed the decoder's {self.max_length} positions")
        positions = torch.arange(length, device=tokens.device)
        embedded = self.word_embedding(tokens) + self.position_embedding(positions)[None]
        embedded = self.embedding_dropout(self.embedding_norm(embedded))
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=tokens.device), diagonal=1)
        padding = None if token_mask is None else ~token_mask.bool()
        hidden = self.transformer(
            embedded, self.visual_projection(memory), tgt_mask=causal, tgt_key_padding_mask=padding, tgt_is_causal=True
        )
        return self.output(hidden)

    def _trim(self, rows: torch.Tensor) -> list[list[int]]:
        """Generated ids without [SOS], cut before the first [EOS]."""
        out = []
        for row in rows.tolist():
            row = row[1:]
            if self.eos_id in row:
                row = row[: row.index(self.eos_id)]
            out.append([i for i in row if i != self.pad_id])
        return out

    @torch.no_grad()
    def generate(self, memory: torch.Tensor, max_length: int | None = None, beam_size: int = 1) -> list[list[int]]:
        """Reports for each memory by greedy decoding (``beam_size=1``) or beam search.

        Beam search keeps the ``beam_size`` prefixes of highest summed log-probability; a prefix
        that produced ``[EOS]`` is finished and only extended by padding at no cost.

        Args:
            memory: [B, M, D] fused image tokens.
            max_length: most tokens per sequence, [SOS] and [EOS] included (<= ``max_length`` of
                the decoder; default that).
            beam_size: beams per report.

        Returns:
            B lists of token ids, without [SOS] and [EOS].
        """
        max_length = min(max_length or self.max_length, self.max_length)
        batch, beams = memory.shape[0], max(1, beam_size)
        memory = memory.repeat_interleave(beams, dim=0)  # [B*K, M, D]
        tokens = torch.full((batch * beams, 1), self.sos_id, dtype=torch.long, device=memory.device)
        finished = torch.zeros(batch * beams, dtype=torch.bool, device=memory.device)
        scores = torch.zeros(batch, beams, device=memory.device)
        scores[:, 1:] = float("-inf")  # all beams start equal: expand the first one only
        for _ in range(max_length - 1):
            logp = self(memory, tokens)[:, -1].float().log_softmax(dim=-1)  # [B*K, V]
            vocab = logp.shape[-1]
            logp[:, [self.sos_id, self.pad_id]] = float("-inf")  # never generated mid-report
            logp[finished] = float("-inf")
            logp[finished, self.pad_id] = 0.0
            candidates = (scores.reshape(-1, 1) + logp).reshape(batch, beams * vocab)
            scores, index = candidates.topk(beams, dim=-1)  # [B, K]
            source = (torch.arange(batch, device=memory.device)[:, None] * beams + index // vocab).reshape(-1)
            words = (index % vocab).reshape(-1, 1)
            tokens = torch.cat([tokens[source], words], dim=1)
            finished = finished[source] | (words.squeeze(1) == self.eos_id)
            if bool(finished.all()):
                break
        best = scores.argmax(dim=-1) + torch.arange(batch, device=memory.device) * beams
        return self._trim(tokens[best])

"""Pretraining heads (MLM, SOP), their losses, and the model that joins them to the encoder.

The MLM head gathers the masked positions before its transform and vocabulary projection: with 15% of
tokens masked (at most 20 of 128) that skips ~85% of the projection, which at full length costs about as
much as the whole encoder (2 * 768 * 30528 FLOPs per token against ~55M). Labels use transformers'
convention (-100 = not masked), so a batch from `DataCollatorForLanguageModeling` works unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .model import ModelConfig, SqueezeBertModel, init_weights
from .precision import compute_context

IGNORE_INDEX = -100  # transformers' label for "not masked": the one constant of the project


class PredictionHeadTransform(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(hidden)))


class MLMHead(nn.Module):
    """Transform (dense, GELU, LayerNorm) then the decoder tied to the word embeddings, plus a bias.

    Named as transformers' `cls.predictions`; the decoder weight is the embedding matrix itself, not a copy."""

    def __init__(self, config: ModelConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.transform = PredictionHeadTransform(config)
        self.word_embeddings = [word_embeddings]  # a list: not registered twice as a submodule
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transform(hidden), self.word_embeddings[0].weight, self.bias)


class OnlyMLMHead(nn.Module):
    def __init__(self, config: ModelConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.predictions = MLMHead(config, word_embeddings)


@dataclass
class PretrainingOutput:
    loss: torch.Tensor  # mlm_loss + sop_loss
    mlm_loss: torch.Tensor
    sop_loss: torch.Tensor
    mlm_accuracy: torch.Tensor
    sop_accuracy: torch.Tensor
    mlm_logits: torch.Tensor  # [masked tokens, V], in row-major order of the masked positions
    mlm_targets: torch.Tensor  # [masked tokens], the original ids there
    sop_logits: torch.Tensor | None  # [N, 2]; None when training MLM only
    num_masked: int


class SqueezeBertForPretraining(nn.Module):
    """Encoder + MLM head + SOP head (a linear classifier on the pooled [CLS] output, as ALBERT's), or, with
    `sop=False`, MLM only: no SOP head at all, so no SOP parameters in checkpoints or exports."""

    def __init__(self, config: ModelConfig, sop: bool = True) -> None:
        super().__init__()
        self.config = config
        self.transformer = SqueezeBertModel(config)
        self.cls = OnlyMLMHead(config, self.transformer.embeddings.word_embeddings)
        self.sop_classifier = nn.Linear(config.hidden_size, 2) if sop else None
        init_weights(self, config.initializer_range)
        self.compute = (torch.device("cpu"), "fp32", "default")  # how the forward computes: see `run_in`

    def run_in(self, device: torch.device, precision: str, determinism: str = "default") -> None:
        """Autocast to bf16/fp16 entered by the forward itself, inside whatever wraps the model. DeepSpeed's
        `engine.forward` re-enters autocast *disabled* on CUDA (it asks `torch.is_autocast_enabled()`, the CUDA
        flag, and has no `torch_autocast` section), so an autocast around the engine never reaches a GPU's
        model; one entered here does, and the backward replays its casts. `determinism = "strict"` also picks
        SDPA's deterministic kernel here (`pretrain.precision.compute_context`)."""
        self.compute = (device, precision, determinism)

    def remove_sop_head(self) -> None:
        """MLM-only training from weights that came with a SOP head (init_from)."""
        self.sop_classifier = None

    def mlm_logits_at(self, hidden: torch.Tensor, mlm_labels: torch.Tensor,
                      positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and labels at the masked positions only. `positions` (flat indices into [N * W]) come with
        the trainer's batches: finding them here (`nonzero`) would make the host wait for the device at
        every micro-step, to learn how many there are."""
        flat_labels = mlm_labels.reshape(-1)
        if positions is None:
            positions = (flat_labels != IGNORE_INDEX).nonzero().squeeze(1)
        masked_hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
        return self.cls.predictions(masked_hidden), flat_labels.index_select(0, positions)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        mlm_labels: torch.Tensor,  # [N, W], the original id at masked positions, -100 elsewhere
        sop_labels: torch.Tensor,  # [N], 1 = segments swapped
        mlm_positions: torch.Tensor | None = None,  # [masked tokens], flat indices of the masked positions
    ) -> PretrainingOutput:
        with compute_context(*self.compute):
            return self._forward(input_ids, attention_mask, token_type_ids, mlm_labels, sop_labels, mlm_positions)

    def _forward(self, input_ids, attention_mask, token_type_ids, mlm_labels, sop_labels,
                 mlm_positions) -> PretrainingOutput:
        hidden, pooled = self.transformer(input_ids, attention_mask, token_type_ids)
        mlm_logits, masked_labels = self.mlm_logits_at(hidden, mlm_labels, mlm_positions)
        num_masked = masked_labels.numel()
        if num_masked:
            mlm_loss = F.cross_entropy(mlm_logits.float(), masked_labels)
        else:  # keeps every parameter in the graph so gradients (zeros) are still all-reduced
            mlm_loss = mlm_logits.sum() * 0.0
        if self.sop_classifier is not None:
            sop_logits = self.sop_classifier(pooled)
            sop_loss = F.cross_entropy(sop_logits.float(), sop_labels)
            with torch.no_grad():
                sop_accuracy = (sop_logits.argmax(-1) == sop_labels).float().mean()
        else:  # MLM only: zeros that keep the trainer's sums in one shape
            sop_logits = None
            sop_loss = sop_accuracy = mlm_loss.new_zeros(())
        with torch.no_grad():
            mlm_accuracy = ((mlm_logits.argmax(-1) == masked_labels).float().mean() if num_masked
                            else mlm_loss.new_zeros(()))
        return PretrainingOutput(
            loss=mlm_loss + sop_loss, mlm_loss=mlm_loss, sop_loss=sop_loss, mlm_accuracy=mlm_accuracy,
            sop_accuracy=sop_accuracy, mlm_logits=mlm_logits, mlm_targets=masked_labels, sop_logits=sop_logits,
            num_masked=num_masked,
        )

"""SqueezeBERT sequence classification on the project's encoder (`pretrain.model`), as a transformers model.

`SqueezeBertClassifier` is transformers' `SqueezeBertForSequenceClassification` (pooler: dense + tanh on
[CLS]; dropout; a linear classifier; the same loss rules) with `pretrain.model`'s layers inside: grouped 1x1
convolutions as batched GEMMs on channels-last activations and q, k, v from one GEMM, where transformers runs
PyTorch's grouped `Conv1d` (its slow path on CPUs). It is a `PreTrainedModel` whose `config_class` is
transformers' `SqueezeBertConfig` and whose parameter names are transformers' own, so `save_pretrained` writes
a folder that `AutoModelForSequenceClassification` loads as `SqueezeBertForSequenceClassification`, and
`from_pretrained` reads that class's folders (and headless ones) with no missing or unexpected key. The
transformers Trainer, distillation (`finetune.distill`) and the chain see the same interface.

Not supported (transformers' class has them; `--implementation transformers`): `inputs_embeds`,
`position_ids`, `output_attentions`, `output_hidden_states`, and SqueezeBERT configs the project's encoder
does not implement (`hidden_act` other than exact GELU, `embedding_size` other than `hidden_size`):
`supports` says which.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from transformers import PreTrainedModel, SqueezeBertConfig
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput

from pretrain.model import ConfigError, Dropout, GroupedPointwise, ModelConfig, SqueezeBertModel

# ModelConfig's switches that change no weight and are not transformers' config keys.
RUNTIME_SWITCHES = ("gradient_checkpointing", "compile")


def encoder_config(config: SqueezeBertConfig) -> ModelConfig:
    """The project's encoder config of a transformers SqueezeBERT config (same field names); ConfigError (a
    UserError) when the encoder does not implement it."""
    if getattr(config, "embedding_size", config.hidden_size) != config.hidden_size:
        raise ConfigError(f"embedding_size {config.embedding_size} differs from hidden_size {config.hidden_size}")
    names = [field.name for field in dataclasses.fields(ModelConfig) if field.name not in RUNTIME_SWITCHES]
    return ModelConfig(**{name: getattr(config, name) for name in names})


def supports(config) -> str | None:
    """None when `SqueezeBertClassifier` can run this transformers config, else why not (one phrase)."""
    if getattr(config, "model_type", None) != "squeezebert":
        return f"model_type is {getattr(config, 'model_type', None)!r}, not 'squeezebert'"
    try:
        encoder_config(config)
    except ConfigError as error:
        return str(error)
    return None


class SqueezeBertPreTrained(PreTrainedModel):
    """transformers' plumbing shared by the two classes below: its SqueezeBERT config, its `transformer.`
    prefix (a headless folder loads into the classifier), and BERT's initialization of every layer, the
    grouped pointwise ones included."""

    config_class = SqueezeBertConfig
    base_model_prefix = "transformer"
    # What `save_pretrained` writes as config.json's `architectures`: transformers' class of the same keys.
    transformers_architecture = ""

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)  # Linear, Embedding (zero padding row), LayerNorm
        if isinstance(module, GroupedPointwise):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            init.zeros_(module.bias)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' `save_pretrained`, with config.json naming transformers' class (it writes this class's
        name), so the folder reads as transformers' own."""
        result = super().save_pretrained(save_directory, *args, **kwargs)
        self.config.architectures = [self.transformers_architecture]
        if kwargs.get("is_main_process", True):
            self.config.save_pretrained(save_directory)
        return result


class SqueezeBertEncoder(SqueezeBertPreTrained):
    """`pretrain.model.SqueezeBertModel` (embeddings, encoder layers, pooler) as transformers'
    `SqueezeBertModel`: the same keys (`embeddings.`, `encoder.layers.N.`, `pooler.dense.`) and config. The
    project's module holds the layers and runs the forward; its three children are registered here too (the
    same objects), so this module's state dict, devices and train/eval mode are theirs."""

    transformers_architecture = "SqueezeBertModel"

    def __init__(self, config: SqueezeBertConfig) -> None:
        super().__init__(config)
        project = SqueezeBertModel(encoder_config(config))
        self.embeddings, self.encoder, self.pooler = project.embeddings, project.encoder, project.pooler
        self.__dict__["project"] = project  # outside the module tree: its parameters are the children above
        self.post_init()

    def train(self, mode: bool = True):
        self.project.training = mode  # its own flag gates activation checkpointing
        return super().train(mode)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, embeddings: nn.Embedding) -> None:
        self.embeddings.word_embeddings = self.project.embeddings.word_embeddings = embeddings

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, return_dict: bool | None = None,
                **unsupported) -> BaseModelOutputWithPooling | tuple:
        refuse(unsupported)
        hidden, pooled = self.project(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        if not (return_dict if return_dict is not None else self.config.return_dict):
            return hidden, pooled
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled)


class SqueezeBertClassifier(SqueezeBertPreTrained):
    """transformers' `SqueezeBertForSequenceClassification` on the project's encoder: the same keys
    (`transformer.`, `classifier.`), config, forward arguments the Trainer passes, outputs and losses
    (regression: MSE; single-label: cross-entropy; multi-label: BCE with logits; `config.problem_type`
    decided from the labels when unset, as transformers decides it)."""

    transformers_architecture = "SqueezeBertForSequenceClassification"

    def __init__(self, config: SqueezeBertConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = SqueezeBertEncoder(config)
        self.dropout = Dropout(config.hidden_dropout_prob)  # the encoder's fast CPU sampler; nn.Dropout's math
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                return_dict: bool | None = None, **unsupported) -> SequenceClassifierOutput | tuple:
        refuse(unsupported)
        _hidden, pooled = self.transformer.project(input_ids, attention_mask=attention_mask,
                                                   token_type_ids=token_type_ids)
        logits = self.classifier(self.dropout(pooled))  # [N, labels]
        loss = None if labels is None else self.loss(logits, labels)
        if not (return_dict if return_dict is not None else self.config.return_dict):
            return (logits,) if loss is None else (loss, logits)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """transformers' loss of `SqueezeBertForSequenceClassification`, rule for rule."""
        if self.config.problem_type is None:
            if self.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        if self.config.problem_type == "regression":
            if self.num_labels == 1:
                return MSELoss()(logits.squeeze(), labels.squeeze())
            return MSELoss()(logits, labels)
        if self.config.problem_type == "single_label_classification":
            return CrossEntropyLoss()(logits.view(-1, self.num_labels), labels.view(-1))
        return BCEWithLogitsLoss()(logits, labels)


def refuse(unsupported: dict) -> None:
    """Arguments of transformers' forward that this model does not implement, when they ask for something
    (the Trainer may pass `num_items_in_batch`, which transformers' SqueezeBERT ignores too)."""
    asked = sorted(name for name, value in unsupported.items()
                   if value not in (None, False) and name != "num_items_in_batch")
    if asked:
        raise ValueError(f"SqueezeBertClassifier does not implement {', '.join(asked)}; use transformers' "
                         "SqueezeBertForSequenceClassification (finetune --implementation transformers)")

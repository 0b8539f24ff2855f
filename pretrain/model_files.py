"""Moving weights between this project and transformers' SqueezeBERT format.

- `export_headless`: the "headless" transformers model (as the released `squeezebert-mnli-headless`): the
  encoder and the MLM head, without the SOP head. `SqueezeBertForSequenceClassification.from_pretrained`
  finds every encoder weight (only its new classifier is initialized) and `SqueezeBertForMaskedLM` finds
  the MLM head too. Writes `config.json`, `model.safetensors` and, when known, the tokenizer files.
- `import_transformers`: a transformers-format SqueezeBERT folder as initial weights (continued
  pretraining from released weights); heads missing from it keep their fresh initialization.
- A model folder (`model_config.json` + `model.safetensors` [+ `vocab/`]) is the project's own portable
  form of the pretraining model, SOP head included.

The parameter names of `pretrain.model` are transformers' own, so the mapping is the identity on every
key; the tied decoder weight is never stored (transformers ties it to the word embeddings on load).
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from formats.errors import UserError, one_line, refused_pickle
from formats.files import atomic_folder
from formats.layout import VOCAB_DIR
from formats.manifest import vocabulary_recorded_beside
from formats.vocabulary import VOCAB_FILE, check_identity, copy_vocab_files, has_vocabulary

from .checkpoint import is_checkpoint, read_trained_model
from .model import ModelConfig
from .pretraining_model import SqueezeBertForPretraining

MODEL_CONFIG_FILE = "model_config.json"
WEIGHTS_FILE = "model.safetensors"
# transformers' own keys only: the runtime switches of ModelConfig (gradient_checkpointing, compile) change no
# weight and stay in the project's model config.
TRANSFORMERS_CONFIG_KEYS = [
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
    "initializer_range", "layer_norm_eps", "pad_token_id", "q_groups", "k_groups", "v_groups",
    "post_attention_groups", "intermediate_groups", "output_groups",
]
SOP_PREFIX = "sop_classifier."


class ExportError(UserError):
    """A checkpoint or folder that cannot be read or written; the message names it."""


@dataclass(frozen=True)
class ModelVocabulary:
    """Where a model's vocabulary is, and which vocabulary a trainer checkpoint was trained with."""

    folder: str | None = None  # the vocabulary folder that goes with the model, when known
    sha256: str | None = None  # sha256 of the tokenizer.json it was trained with (trainer checkpoints)
    recorded_in: str = ""  # what records `sha256`, as a message names it


def transformers_config(config: ModelConfig) -> dict:
    values = {key: getattr(config, key) for key in TRANSFORMERS_CONFIG_KEYS}
    return {
        "architectures": ["SqueezeBertForMaskedLM"],
        "model_type": "squeezebert",
        "embedding_size": config.hidden_size,
        **values,
    }


def model_config_from_transformers(values: dict, source: str) -> ModelConfig:
    if values.get("model_type") != "squeezebert":
        raise ExportError(f"{source}: model_type is {values.get('model_type')!r}, not 'squeezebert'")
    if values.get("embedding_size", values["hidden_size"]) != values["hidden_size"]:
        raise ExportError(f"{source}: embedding_size differs from hidden_size, which SqueezeBERT does not support")
    defaults = ModelConfig()
    return ModelConfig(**{key: values.get(key, getattr(defaults, key)) for key in TRANSFORMERS_CONFIG_KEYS})


def headless_state_dict(model: SqueezeBertForPretraining) -> dict[str, torch.Tensor]:
    return {
        key: tensor.detach().to("cpu", torch.float32).contiguous()
        for key, tensor in model.state_dict().items()
        if not key.startswith(SOP_PREFIX)
    }


def _write_json(path: str, values: dict) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(values, handle, indent=2, sort_keys=True)
        handle.write("\n")


def check_vocab(vocab_dir: str, config: ModelConfig, trained_with: ModelVocabulary | None = None) -> None:
    """The vocabulary an export ships: the one the model was trained with when that is known (its sha256, and
    `vocab.txt` agreeing with `tokenizer.json`), and no larger than the model's."""
    if trained_with and trained_with.sha256:
        check_identity(vocab_dir, trained_with.sha256, trained_with.recorded_in,
                       "not the vocabulary the model was trained with: pass --vocab with that one (the vocabulary "
                       "its shards were made with)")
    vocab_txt = os.path.join(vocab_dir, VOCAB_FILE)
    if not os.path.isfile(vocab_txt):
        raise ExportError(f"--vocab {vocab_dir}: no vocab.txt there")
    with open(vocab_txt, encoding="utf-8") as handle:
        size = sum(1 for _ in handle)
    if size > config.vocab_size:
        raise ExportError(
            f"--vocab {vocab_dir}: {size} wordpieces, more than the model's vocab_size {config.vocab_size}; "
            "this vocabulary was not the model's"
        )


def _write_tokenizer(vocab_dir: str, out_dir: str, config: ModelConfig) -> None:
    copy_vocab_files(vocab_dir, out_dir)
    _write_json(os.path.join(out_dir, "tokenizer_config.json"), {
        "tokenizer_class": "SqueezeBertTokenizer", "do_lower_case": True,
        "model_max_length": config.max_position_embeddings,
        "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]",
    })


def export_headless(model: SqueezeBertForPretraining, out_dir: str, vocab_dir: str | None = None,
                    trained_with: ModelVocabulary | None = None) -> None:
    """Write the transformers-format headless model (see the module docstring) to `out_dir`, with the tokenizer
    files of `vocab_dir`, checked to be the vocabulary `trained_with` names when it names one."""
    if vocab_dir:
        check_vocab(vocab_dir, model.config, trained_with)
    with atomic_folder(out_dir, write_errors=(SafetensorError,)) as tmp_dir:
        save_file(headless_state_dict(model), os.path.join(tmp_dir, WEIGHTS_FILE), metadata={"format": "pt"})
        _write_json(os.path.join(tmp_dir, "config.json"), transformers_config(model.config))
        if vocab_dir:
            _write_tokenizer(vocab_dir, tmp_dir, model.config)


def save_model_folder(model: SqueezeBertForPretraining, out_dir: str, vocab_dir: str | None = None) -> None:
    """The project's portable model folder: all weights including the SOP head, and the model config."""
    with atomic_folder(out_dir, write_errors=(SafetensorError,)) as tmp_dir:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(state, os.path.join(tmp_dir, WEIGHTS_FILE), metadata={"format": "pt"})
        _write_json(os.path.join(tmp_dir, MODEL_CONFIG_FILE), model.config.to_dict())
        if vocab_dir:
            copy_vocab_files(vocab_dir, os.path.join(tmp_dir, VOCAB_DIR))


def _load_weights(folder: str) -> dict[str, torch.Tensor]:
    """A model folder's weights: safetensors, or else a `pytorch_model.bin` read with `weights_only=True`
    (tensors only: a pickle that would run code is refused). A damaged file is a one-line error."""
    safetensors_path = os.path.join(folder, WEIGHTS_FILE)
    bin_path = os.path.join(folder, "pytorch_model.bin")
    try:
        if os.path.isfile(safetensors_path):
            return load_file(safetensors_path)
        if os.path.isfile(bin_path):
            return torch.load(bin_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if refused_pickle(error):
            raise ExportError(f"{bin_path}: refused: it holds more than tensors, and unpickling it could run code; "
                              "convert it to model.safetensors with a tool you trust") from error
        raise ExportError(f"{bin_path}: not a readable weights file ({one_line(error)[:200]})") from error
    except (SafetensorError, RuntimeError, EOFError) as error:
        name = WEIGHTS_FILE if os.path.isfile(safetensors_path) else "pytorch_model.bin"
        raise ExportError(f"{os.path.join(folder, name)}: not a readable weights file ({one_line(error)[:200]}); "
                          "download or export it again") from error
    raise ExportError(f"{folder}: no {WEIGHTS_FILE} or pytorch_model.bin")


def import_transformers(folder: str) -> tuple[SqueezeBertForPretraining, list[str]]:
    """A pretraining model initialized from a transformers SqueezeBERT folder; returns it and the names of
    the parameters the folder did not have (kept at their fresh initialization)."""
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise ExportError(f"{folder}: no config.json; not a transformers model folder")
    with open(config_path, encoding="utf-8") as handle:
        config = model_config_from_transformers(json.load(handle), config_path)
    model = SqueezeBertForPretraining(config)
    weights = _load_weights(folder)
    # Base-model-only checkpoints (SqueezeBertModel.save_pretrained) have no `transformer.` prefix.
    if not any(k.startswith("transformer.") for k in weights):
        weights = {f"transformer.{k}": v for k, v in weights.items()}
    expected = model.state_dict()
    usable = {k: v for k, v in weights.items() if k in expected}
    for key, tensor in usable.items():
        if tensor.shape != expected[key].shape:
            raise ExportError(f"{folder}: {key} has shape {tuple(tensor.shape)}, "
                              f"the config implies {tuple(expected[key].shape)}")
    missing = sorted(set(expected) - set(usable))
    required_missing = [k for k in missing if k.startswith("transformer.")]
    if required_missing:
        more = "..." if len(required_missing) > 5 else ""
        raise ExportError(f"{folder}: encoder weights missing: {required_missing[:5]}{more}")
    model.load_state_dict(usable, strict=False)
    return model, missing


def load_model_folder(folder: str) -> SqueezeBertForPretraining:
    config_path = os.path.join(folder, MODEL_CONFIG_FILE)
    with open(config_path, encoding="utf-8") as handle:
        config = ModelConfig.from_dict(json.load(handle), config_path)
    weights = _load_weights(folder)
    model = SqueezeBertForPretraining(config, sop=any(key.startswith(SOP_PREFIX) for key in weights))
    result = model.load_state_dict(weights, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ExportError(f"{folder}: weights do not match the config (missing {result.missing_keys[:3]}, "
                          f"unexpected {result.unexpected_keys[:3]})")
    return model


def load_training_checkpoint(path: str) -> tuple[SqueezeBertForPretraining, ModelVocabulary]:
    """The model of a trainer checkpoint (a `step-N/` folder, or a checkpoint dir: its `latest`), its vocabulary
    folder (beside its shards) and the sha256 of the vocabulary it was trained with. A checkpoint of an earlier
    version records no sha256: the one the manifests of the shard sets beside its vocabulary folder record
    stands in (`formats.manifest.vocabulary_recorded_beside`), else it is None."""
    weights, model_config, vocab, vocab_sha256 = read_trained_model(path)
    model = SqueezeBertForPretraining(ModelConfig.from_dict(model_config, f"--checkpoint {path}"),
                                      sop=any(key.startswith(SOP_PREFIX) for key in weights))  # MLM-only runs
    model.load_state_dict(weights)
    recorded_in = f"--checkpoint {path}"
    if vocab_sha256 is None and vocab:
        vocab_sha256, recorded_in = vocabulary_recorded_beside(vocab), f"the manifest of the shard sets beside {vocab}"
    return model, ModelVocabulary(vocab if vocab and has_vocabulary(vocab) else None, vocab_sha256, recorded_in)


def load_any(path: str) -> tuple[SqueezeBertForPretraining, ModelVocabulary]:
    """A model from a trainer checkpoint, a project model folder or a transformers folder, and its vocabulary
    (the folder if known; for a trainer checkpoint, the sha256 it was trained with)."""
    if is_checkpoint(path):
        return load_training_checkpoint(path)
    if os.path.isfile(os.path.join(path, MODEL_CONFIG_FILE)):
        vocab = os.path.join(path, VOCAB_DIR)
        return load_model_folder(path), ModelVocabulary(vocab if os.path.isdir(vocab) else None)
    if os.path.isfile(os.path.join(path, "config.json")):
        model, _missing = import_transformers(path)
        return model, ModelVocabulary(path if os.path.isfile(os.path.join(path, VOCAB_FILE)) else None)
    raise ExportError(f"--checkpoint {path}: not a trainer checkpoint (latest, state/), a model folder "
                      f"({MODEL_CONFIG_FILE}) nor a transformers folder (config.json)")

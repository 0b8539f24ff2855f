"""Reading a transformers model folder (the student, a teacher, the headless MNLI model) without running code
from it.

A `pytorch_model.bin` is a pickle, and unpickling one can run any code its writer put there. Weights are
therefore read from safetensors whenever the folder has them (transformers' own preference, stated here
rather than left to its defaults), and a folder with only `pytorch_model*.bin` is read with
`weights_only=True`: tensors load, anything else is refused in one line. `check_weights` does this before
any compute; `load_classifier` loads the same way (transformers' class, or the project's SqueezeBERT classifier:
`--implementation`) and turns any failure into one line naming the flag.
"""

from __future__ import annotations

import glob
import os
import pickle
import zipfile

from formats.errors import UserError, one_line, refused_pickle

SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLED_WEIGHTS = "pytorch_model*.bin"  # pytorch_model.bin, or its shards pytorch_model-00001-of-00002.bin


class ModelFolderError(UserError):
    """A model folder that cannot be used; the message names the flag, the folder and what to do."""


def has_safetensors(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, name)) for name in SAFETENSORS_FILES)


def _refusal(flag: str, folder: str, name: str, error: BaseException) -> ModelFolderError:
    return ModelFolderError(f"{flag} {folder}: {name} refused: it holds more than tensors, and unpickling it would "
                            f"run {refused_pickle(error)}; give a folder with model.safetensors (convert the file "
                            "with a tool you trust)")


def refused_checkpoint(checkpoint: str, error: BaseException) -> ModelFolderError:
    """A Trainer checkpoint (`checkpoints/checkpoint-N/`) whose optimizer, scheduler or RNG state is a pickle
    that `weights_only=True` refused."""
    return ModelFolderError(f"{checkpoint}: refused: a file of this checkpoint holds more than tensors, and "
                            f"unpickling it would run {refused_pickle(error)}; remove {checkpoint} to resume "
                            "from the one before it, or use another --out to start over")


def check_weights(folder: str, flag: str = "--model") -> None:
    """The folder's weights can be read as tensors: safetensors, or every `pytorch_model*.bin` read with
    `weights_only=True` (memory-mapped: the check reads little more than the pickle's index)."""
    import torch

    if has_safetensors(folder):
        return
    pickled = sorted(glob.glob(os.path.join(folder, PICKLED_WEIGHTS)))
    if not pickled:
        raise ModelFolderError(f"{flag} {folder}: no weights (model.safetensors or pytorch_model.bin); not a "
                               "transformers model folder")
    for path in pickled:
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
            if refused_pickle(error):
                raise _refusal(flag, folder, os.path.basename(path), error) from None
            raise ModelFolderError(f"{flag} {folder}: {os.path.basename(path)} is not a readable weights file "
                                   f"({one_line(error, 160)})") from None


def classifier_class(folder: str, flag: str, implementation: str):
    """The class that loads `folder`: the project's `SqueezeBertClassifier` (`finetune.classifier`) for
    `project`, and for `auto` when the folder is a SqueezeBERT it can run; else transformers' Auto class."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if implementation == "transformers":
        return AutoModelForSequenceClassification
    from .classifier import SqueezeBertClassifier, supports

    try:
        config = AutoConfig.from_pretrained(folder)
    except Exception as error:  # a missing or damaged config.json: one line
        raise ModelFolderError(f"{flag} {folder}: unreadable config ({one_line(error, 200)})") from None
    why_not = supports(config)
    if why_not is None:
        return SqueezeBertClassifier
    if implementation == "project":
        raise ModelFolderError(f"{flag} {folder}: the project's SqueezeBERT classifier cannot run it ({why_not}); "
                               "use --implementation transformers (or auto)")
    return AutoModelForSequenceClassification


def load_classifier(folder: str, flag: str = "--model", implementation: str = "transformers", **kwargs):
    """`from_pretrained(folder, **kwargs)` of `classifier_class` (transformers' Auto class by default), from
    safetensors when the folder has them, else with `weights_only=True`; a failure is one line naming `flag`."""
    model_class = classifier_class(folder, flag, implementation)
    try:
        return model_class.from_pretrained(
            folder, use_safetensors=has_safetensors(folder) or None, weights_only=True, **kwargs)
    except Exception as error:  # a refused pickle, a damaged file, a config transformers does not know: one line
        if refused_pickle(error):
            raise _refusal(flag, folder, "its pytorch_model.bin", error) from None
        raise ModelFolderError(f"{flag} {folder}: transformers cannot load it ({one_line(error, 200)})") from None


def resolve_model_folder(name: str, flag: str = "--model") -> str:
    """A local folder as given; anything else is a hub id, looked up in the local hub cache only (no network:
    `HF_HUB_CACHE`/`HF_HOME` say where it is), its snapshot folder returned. Not cached: one line naming the
    command that downloads it."""
    if os.path.isdir(name) or os.path.isabs(name) or name.startswith(".") or name.count("/") > 1:
        return name  # a path (missing ones are reported by the checks that read it)
    from huggingface_hub import constants, snapshot_download

    try:
        return snapshot_download(name, local_files_only=True)
    except Exception:  # not cached, or not a valid repo id: the same advice
        raise ModelFolderError(f"{flag} {name}: no such folder, and not in the local hub cache "
                               f"{constants.HF_HUB_CACHE}; download it first (`hf download {name}`, or "
                               f"`huggingface-cli download {name}`) or give a folder") from None


def load_tokenizer(folder: str, flag: str = "--model"):
    """The folder's tokenizer; one with no vocabulary beyond its special tokens is refused (transformers 5 makes
    such a tokenizer from a config alone, and every word would be [UNK])."""
    from transformers import AutoTokenizer

    if flag == "--model" and not os.path.isfile(os.path.join(folder, "config.json")):
        raise ModelFolderError(f"{flag} {folder}: no config.json; not a transformers model folder")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as error:
        raise ModelFolderError(f"{flag} {folder}: no usable tokenizer files ({one_line(error, 160)}); an export "
                               "needs --vocab (python -m pretrain export --vocab DIR), or give --tokenizer DIR"
                               ) from None
    if len(tokenizer) <= len(tokenizer.all_special_tokens):
        raise ModelFolderError(f"{flag} {folder}: no usable tokenizer files (no vocabulary beyond the special "
                               "tokens); an export needs --vocab (python -m pretrain export --vocab DIR), or give "
                               "--tokenizer DIR")
    return tokenizer

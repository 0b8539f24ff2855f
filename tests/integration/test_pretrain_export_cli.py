"""`python -m pretrain export` in a real process, and the exported folder in transformers."""

import subprocess
import sys

import torch

from pretrain.model import ModelConfig
from pretrain.model_files import save_model_folder
from pretrain.pretraining_model import SqueezeBertForPretraining
from tests.conftest import ROOT


def run_pretrain(*args):
    return subprocess.run([sys.executable, "-m", "pretrain", *map(str, args)], cwd=ROOT, capture_output=True, text=True)


def test_export_cli_writes_a_model_transformers_loads(vocab_dir, tmp_path):
    config = ModelConfig(vocab_size=8000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=256)
    model = SqueezeBertForPretraining(config).eval()
    save_model_folder(model, str(tmp_path / "model"), vocab_dir)
    result = run_pretrain("export", "--checkpoint", tmp_path / "model", "--out", tmp_path / "export")
    assert result.returncode == 0, result.stderr
    from transformers import AutoTokenizer, SqueezeBertModel

    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "export"))
    encoder = SqueezeBertModel.from_pretrained(str(tmp_path / "export")).eval()
    batch = tokenizer(["Anarchism is a political philosophy.", "Short."], padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = encoder(**batch).last_hidden_state
        ours, _ = model.transformer(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    real = batch["attention_mask"].bool()
    assert (theirs[real] - ours[real]).abs().max() <= 1e-5


def test_export_cli_bad_checkpoint_is_one_line(tmp_path):
    result = run_pretrain("export", "--checkpoint", tmp_path / "missing", "--out", tmp_path / "export")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "--checkpoint" in result.stderr

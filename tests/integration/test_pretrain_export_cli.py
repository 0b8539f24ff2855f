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


def tiny_model():
    config = ModelConfig(vocab_size=512, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)
    return SqueezeBertForPretraining(config).eval()


class RunsCode:
    def __reduce__(self):
        return (print, ("this pickle ran code",))


def test_a_transformers_folder_is_read_through_safetensors_and_an_unsafe_bin_is_refused(tmp_path):
    from transformers import SqueezeBertConfig, SqueezeBertModel

    folder = tmp_path / "hub"
    config = SqueezeBertConfig(vocab_size=512, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, embedding_size=32)
    SqueezeBertModel(config).save_pretrained(folder)  # model.safetensors
    assert (folder / "model.safetensors").is_file()
    assert run_pretrain("export", "--checkpoint", folder, "--out", tmp_path / "export").returncode == 0
    # an older folder with only pytorch_model.bin: tensors load (weights_only=True), anything else is refused
    weights = SqueezeBertModel(config).state_dict()
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    assert run_pretrain("export", "--checkpoint", folder, "--out", tmp_path / "export2").returncode == 0
    torch.save({**weights, "extra": RunsCode()}, folder / "pytorch_model.bin")
    refused = run_pretrain("export", "--checkpoint", folder, "--out", tmp_path / "export3")
    assert refused.returncode == 2 and "this pickle ran code" not in refused.stdout + refused.stderr
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()] and "refused" in refused.stderr
    assert not (tmp_path / "export3").exists()


def test_a_damaged_weights_file_is_one_line(tmp_path):
    save_model_folder(tiny_model(), str(tmp_path / "model"))
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    result = run_pretrain("export", "--checkpoint", tmp_path / "model", "--out", tmp_path / "export")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "model.safetensors: not a readable weights file" in result.stderr


def test_the_export_is_fp32_whatever_the_model_was_held_in(tmp_path):
    from safetensors import safe_open

    from pretrain.model_files import export_headless

    model = tiny_model().to(torch.bfloat16)  # e.g. a model kept in bf16 by someone's script
    export_headless(model, str(tmp_path / "export"))
    with safe_open(str(tmp_path / "export" / "model.safetensors"), framework="pt") as weights:
        dtypes = {weights.get_tensor(name).dtype for name in weights.keys()}
    assert dtypes == {torch.float32}

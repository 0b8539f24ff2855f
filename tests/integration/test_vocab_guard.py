"""The vocabulary and the manifest's counts are the ones the shards were made with (issue 18, items 3 and 7): a
vocabulary swapped for another of the same size beside the shards is refused by training (fresh and resumed, with
whole-word masking), by the export and by `verify`; hand-edited counts are refused by training and by `verify`.
Real processes (`python -m data_prep`, `python -m pretrain`), the tiny config, one training run in all."""

import json
import os
import shutil
import sys

import pytest
import torch

from formats.files import file_sha256
from formats.vocabulary import short
from tests.conftest import make_shards, run_cli
from tests.integration.test_trainer import train_command
from tests.integration.test_trainer_guards import run_pretrain

# A short run: two steps of phase 1, one of phase 2, saved at each phase's end; no evaluation.
SHORT_RUN = ("phases.0.steps=2", "phases.1.steps=1", "checkpoint.every_steps=0", "logging.eval_every_steps=0",
             "masking.whole_word=true")
SWAPPED_PIECES = ("the", "and")  # two frequent wordpieces whose ids the other vocabulary exchanges


@pytest.fixture(scope="module")
def swapped_vocab(vocab_dir, tmp_path_factory):
    """A vocabulary of the same size as the shards' with the ids of two wordpieces exchanged: `tokenizer.json`
    and `vocab.txt` agree with each other, only not with the shards."""
    from tokenizers import Tokenizer

    from data_prep.tokenizer import save_vocab

    values = json.load(open(os.path.join(vocab_dir, "tokenizer.json"), encoding="utf-8"))
    pieces = values["model"]["vocab"]
    first, second = SWAPPED_PIECES
    pieces[first], pieces[second] = pieces[second], pieces[first]
    out = tmp_path_factory.mktemp("swapped_vocab")
    save_vocab(Tokenizer.from_str(json.dumps(values)), str(out))
    return str(out)


def copy_data(shard_root, target, vocab=None):
    """A copy of the prepared data folder, with `vocab` in place of its vocabulary when given."""
    shutil.copytree(shard_root, target)
    if vocab:
        shutil.rmtree(os.path.join(target, "vocab"))
        shutil.copytree(vocab, os.path.join(target, "vocab"))
    return str(target)


@pytest.fixture(scope="module")
def trained(shard_root, tmp_path_factory):
    """(data folder, run folder): a short run on its own copy of the data, with its checkpoints."""
    data = copy_data(shard_root, tmp_path_factory.mktemp("trained") / "data")
    workdir = tmp_path_factory.mktemp("trained_run")
    result = run_pretrain(train_command(data, *SHORT_RUN), workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return data, str(workdir)


def saved(checkpoint_dir):
    return sorted(os.listdir(checkpoint_dir)) if os.path.isdir(checkpoint_dir) else []


def error_line(result, code=2):
    """The one line a refused command ends with (DeepSpeed's start-up warnings may come before it)."""
    assert result.returncode == code and "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]


def run_export(*args):
    return run_pretrain([sys.executable, "-m", "pretrain", "export", *map(str, args)], os.getcwd())


@pytest.mark.parametrize("resuming", [False, True], ids=["fresh", "resume"])
def test_training_refuses_a_swapped_vocabulary_at_start_and_on_resume(trained, swapped_vocab, tmp_path, resuming):
    data, workdir = trained
    swapped = copy_data(data, tmp_path / "data", vocab=swapped_vocab)
    if resuming:  # the run's checkpoints, resumed on the same shards with the vocabulary beside them swapped
        shutil.copytree(os.path.join(workdir, "checkpoints"), tmp_path / "checkpoints")
    result = run_pretrain(train_command(swapped, *SHORT_RUN), tmp_path)
    line = error_line(result)
    manifest = os.path.join(swapped, "seq128", "manifest.json")
    found, recorded = file_sha256(swapped_vocab + "/tokenizer.json"), json.load(open(manifest))["tokenizer"]["sha256"]
    assert line == (f"pretrain: error: phases.0.shards: {swapped}/vocab/tokenizer.json: sha256 {short(found)}, but "
                    f"{manifest} records {short(recorded)}; not the vocabulary the shards were made with: restore "
                    "that one there, or remake the shards with this one (`python -m data_prep shards`)")
    assert saved(tmp_path / "checkpoints") == (saved(os.path.join(workdir, "checkpoints")) if resuming else [])


@pytest.fixture(scope="module")
def remade(swapped_vocab, small_corpus, tmp_path_factory):
    """The shards remade from the same corpus with the other vocabulary (which `data_prep` copies beside them)."""
    return make_shards(tmp_path_factory.mktemp("remade"), small_corpus, swapped_vocab)


def test_a_resume_on_shards_remade_with_another_vocabulary_is_refused(trained, remade, swapped_vocab, tmp_path):
    """Each shard set agrees with the vocabulary beside it, but the checkpoint's recorded vocabulary is not the
    remade shards'."""
    data, workdir = trained
    shutil.copytree(os.path.join(workdir, "checkpoints"), tmp_path / "checkpoints")
    line = error_line(run_pretrain(train_command(remade, *SHORT_RUN), tmp_path))
    trained_with = json.load(open(os.path.join(data, "seq128", "manifest.json")))["tokenizer"]["sha256"]
    assert f"checkpoints/step-00000003: trained with the vocabulary of sha256 {short(trained_with)}, " \
           f"phases.0.shards was made with {short(file_sha256(swapped_vocab + '/tokenizer.json'))}" in line, line


def test_phases_made_with_different_vocabularies_are_refused(shard_root, remade):
    """A checkpoint records one vocabulary, the one its export ships: every phase's shards must be made with it."""
    from pretrain.config import RunConfigError, load_config
    from pretrain.model import ModelConfig
    from pretrain.trainer import open_phase_data

    command = train_command(shard_root, f'phases.1.shards="{remade}/seq512"')
    config = load_config(command[command.index("--config") + 1], command[command.index("--set") + 1::2])
    with pytest.raises(RunConfigError, match=r"^phases.1.shards: made with the vocabulary of sha256 [0-9a-f]{12}, "
                       r"phases.0.shards with [0-9a-f]{12}; a run trains one vocabulary"):
        open_phase_data(config, ModelConfig.preset("squeezebert-tiny"))


def test_init_from_a_checkpoint_refuses_shards_made_with_another_vocabulary(trained, remade):
    """The README's separate phase-2 run starts from init_from: its shards must be made with the model's vocabulary."""
    from pretrain.config import RunConfigError, load_config
    from pretrain.trainer import build_model

    data, workdir = trained
    checkpoint = os.path.join(workdir, "checkpoints")
    for root, refused in ((data, False), (remade, True)):
        command = train_command(root, f'init_from="{checkpoint}"')
        config = load_config(command[command.index("--config") + 1], command[command.index("--set") + 1::2])
        if refused:
            with pytest.raises(RunConfigError, match=rf"^init_from = '{checkpoint}': trained with the vocabulary of "
                               r"sha256 [0-9a-f]{12}, phases.0.shards was made with [0-9a-f]{12}; use shards"):
                build_model(config)
        else:
            build_model(config)


def test_the_checkpoint_records_the_vocabulary_it_was_trained_with(trained):
    data, workdir = trained
    states = torch.load(os.path.join(workdir, "checkpoints", "step-00000003", "state", "mp_rank_00_model_states.pt"),
                        map_location="cpu", weights_only=True)
    assert states["vocab_sha256"] == file_sha256(os.path.join(data, "vocab", "tokenizer.json"))
    assert states["vocab_dir"] == os.path.join(data, "vocab")


@pytest.fixture
def vocabulary_swapped_beside(trained, swapped_vocab):
    """The trained run's own data folder with its vocabulary swapped for the other one, put back afterwards."""
    data, _ = trained
    vocab, kept = os.path.join(data, "vocab"), os.path.join(data, "vocab.kept")
    os.replace(vocab, kept)
    shutil.copytree(swapped_vocab, vocab)
    yield vocab
    shutil.rmtree(vocab)
    os.replace(kept, vocab)


def test_export_refuses_the_swapped_vocabulary_beside_the_shards(trained, vocabulary_swapped_beside, vocab_dir,
                                                                 tmp_path):
    _, workdir = trained
    checkpoint = os.path.join(workdir, "checkpoints")
    line = error_line(run_export("--checkpoint", checkpoint, "--out", tmp_path / "export"))
    assert f"{vocabulary_swapped_beside}/tokenizer.json: sha256 " \
           f"{short(file_sha256(vocabulary_swapped_beside + '/tokenizer.json'))}, but --checkpoint " \
           f"{checkpoint} records {short(file_sha256(vocab_dir + '/tokenizer.json'))}" in line, line
    assert "pass --vocab with that one" in line and not (tmp_path / "export").exists()
    # the vocabulary the model was trained with, named by --vocab: exported, byte for byte
    result = run_export("--checkpoint", checkpoint, "--out", tmp_path / "export", "--vocab", vocab_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("tokenizer.json", "vocab.txt"):
        assert file_sha256(tmp_path / "export" / name) == file_sha256(os.path.join(vocab_dir, name))


def test_export_refuses_another_vocabulary_named_by_the_vocab_flag(trained, swapped_vocab, tmp_path):
    _, workdir = trained
    result = run_export("--checkpoint", os.path.join(workdir, "checkpoints"), "--out", tmp_path / "export",
                        "--vocab", swapped_vocab)
    assert f"{swapped_vocab}/tokenizer.json: sha256 " in error_line(result)
    assert not (tmp_path / "export").exists()


def earlier_version_checkpoint(workdir, target, vocab_dir=None):
    """A copy of the run's last checkpoint as an earlier version saved it: no vocabulary sha256 in its client
    state (and, when given, another vocabulary folder), its files record made again."""
    from pretrain.checkpoint import FILES_RECORD, record_files

    step = target / "step-00000003"
    shutil.copytree(os.path.join(workdir, "checkpoints", "step-00000003"), step)
    states_path = step / "state" / "mp_rank_00_model_states.pt"
    states = torch.load(states_path, map_location="cpu", weights_only=True)
    del states["vocab_sha256"], states["schema_version"]  # schema 0: written before the version was
    if vocab_dir:
        states["vocab_dir"] = vocab_dir
    torch.save(states, states_path)
    os.remove(step / FILES_RECORD)
    record_files(str(step))
    return str(step)


def test_an_earlier_checkpoint_is_checked_against_the_manifests_beside_its_vocabulary(
        trained, vocabulary_swapped_beside, tmp_path):
    data, workdir = trained
    step = earlier_version_checkpoint(workdir, tmp_path / "old")
    line = error_line(run_export("--checkpoint", step, "--out", tmp_path / "export"))
    recorded = json.load(open(os.path.join(data, "seq128", "manifest.json")))["tokenizer"]["sha256"]
    beside = f"the manifest of the shard sets beside {vocabulary_swapped_beside}"
    assert f"but {beside} records {short(recorded)}" in line, line


def test_an_earlier_checkpoint_without_manifests_beside_its_vocabulary_is_exported_with_a_note(
        trained, swapped_vocab, tmp_path):
    _, workdir = trained
    lone = tmp_path / "lone" / "vocab"  # a vocabulary folder with no shard set beside it
    shutil.copytree(swapped_vocab, lone)
    step = earlier_version_checkpoint(workdir, tmp_path / "old", vocab_dir=str(lone))
    result = run_export("--checkpoint", step, "--out", tmp_path / "export")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"pretrain: note: {step} records no vocabulary sha256 (saved by an earlier version) and no manifest " \
           f"beside {lone} names one: the tokenizer files of {lone} are exported unchecked" in result.stderr


def test_merge_refuses_parts_whose_vocabulary_was_swapped(small_corpus, vocab_dir, swapped_vocab, tmp_path):
    """The merged set carries the first part's vocabulary: it must be the one the parts were made with."""
    for part in range(2):
        run_cli("shards", "--source", small_corpus, "--vocab", vocab_dir, "--out", tmp_path / f"part{part}",
                "--part", f"{part}/2", "--num-proc", "1", "--shard-text-mb", "0.2", "--quiet")
    shutil.rmtree(tmp_path / "part0" / "vocab")
    shutil.copytree(swapped_vocab, tmp_path / "part0" / "vocab")
    result = run_cli("merge", "--parts", tmp_path / "part0", tmp_path / "part1", "--out", tmp_path / "merged",
                     check=False)
    line = error_line(result)
    assert line.startswith(f"data_prep: error: {tmp_path}/part0/vocab/tokenizer.json: sha256 "
                           f"{short(file_sha256(swapped_vocab + '/tokenizer.json'))}, but {tmp_path}/part0/seq128/"
                           f"manifest.json records {short(file_sha256(vocab_dir + '/tokenizer.json'))}"), line
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "merged").exists()


def swap_two_lines(path, first, second):
    lines = open(path, encoding="utf-8").read().split("\n")
    lines[first], lines[second] = lines[second], lines[first]
    open(path, "w", encoding="utf-8").write("\n".join(lines))


@pytest.mark.parametrize("change", ["swapped", "vocab.txt edited", "removed"])
def test_verify_checks_the_vocabulary_beside_the_shard_set(shard_root, swapped_vocab, tmp_path, change):
    data = copy_data(shard_root, tmp_path / "data", vocab=swapped_vocab if change == "swapped" else None)
    vocab = os.path.join(data, "vocab")
    if change == "vocab.txt edited":  # tokenizer.json intact; whole-word masking and BertTokenizer read vocab.txt
        swap_two_lines(os.path.join(vocab, "vocab.txt"), 100, 101)
    if change == "removed":
        shutil.rmtree(vocab)
    result = run_cli("verify", data, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout.count("FAILED") == 2  # seq128 and seq512
    if change == "swapped":  # inspect would decode the examples as other words
        assert "not the vocabulary the shards were made with: pass --vocab with that one" in error_line(
            run_cli("inspect", data + "/seq128", "-n", "1", check=False))
    if change == "swapped":
        expected = (f"{vocab}/tokenizer.json: sha256 {short(file_sha256(swapped_vocab + '/tokenizer.json'))}, but "
                    f"{data}/seq128/manifest.json records {short(file_sha256(shard_root + '/vocab/tokenizer.json'))}")
    elif change == "vocab.txt edited":
        expected = (f"{vocab}/vocab.txt: sha256 {short(file_sha256(vocab + '/vocab.txt'))}, but the wordpieces of "
                    "tokenizer.json (sha256 ")
    else:
        expected = f"{vocab}: no vocabulary beside the shard set"
    assert f"data_prep: verify: {expected}" in result.stderr, result.stderr
    if change == "vocab.txt edited":
        assert "(first difference at line 101)" in result.stderr


def edit_shard_tokens(manifest, folder):
    """One shard's `tokens`, and the totals with it (so that only the shard's file can tell)."""
    entry = manifest["shards"][0]
    entry["tokens"] += 1
    manifest["totals"]["tokens"] += 1
    return (f"{folder}/{entry['file']}: {entry['tokens'] - 1} tokens, manifest says {entry['tokens']} "
            f"(shards[0].tokens of {folder}/manifest.json)")


def edit_totals(manifest, folder):
    manifest["totals"]["tokens"] -= 5
    total = manifest["totals"]["tokens"]
    return f"{folder}/manifest.json: totals.tokens is {total}, not the sum over the shards' entries ({total + 5})"


def edit_vocab_size(manifest, folder):
    manifest["tokenizer"]["vocab_size"] += 64
    size = manifest["tokenizer"]["vocab_size"]
    return (f"{folder}/manifest.json: tokenizer.vocab_size {size}, but the vocabulary of sha256 "
            f"{short(manifest['tokenizer']['sha256'])} has {size - 64} wordpieces")


@pytest.mark.parametrize("edit", [edit_shard_tokens, edit_totals, edit_vocab_size], ids=lambda edit: edit.__name__)
def test_hand_edited_manifest_counts_are_refused_by_training_and_verify(shard_root, tmp_path, edit):
    data = copy_data(shard_root, tmp_path / "data")
    folder = os.path.join(data, "seq128")
    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    problem = edit(manifest, folder)
    open(os.path.join(folder, "manifest.json"), "w").write(json.dumps(manifest, indent=1))
    line = error_line(run_pretrain(train_command(data, *SHORT_RUN), tmp_path))
    assert line == (f"pretrain: error: phases.0.shards: {problem}; run `python -m data_prep verify {folder}`, then "
                    "restore the manifest or remake the shard set"), line
    assert saved(tmp_path / "checkpoints") == []
    result = run_cli("verify", data, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"data_prep: verify: {problem}; restore the manifest, or remake the shard set" in result.stderr
    assert f"{folder}: FAILED" in result.stdout and f"{data}/seq512: ok" in result.stdout

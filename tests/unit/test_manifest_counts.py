"""A manifest's counts and vocabulary record against its shards and the vocabulary beside them (issue 18, item
7): what a training start checks cheaply (`ShardSet`, `formats.manifest.check_for_training`) and what `verify`
adds by reading every shard. Real shard sets made by the CLI, edited by hand as the issue describes."""

import json
import os
import shutil

import pyarrow.compute as pc
import pytest

from formats.errors import FormatError
from formats.manifest import load_manifest, verify_folder
from formats.shards import open_shard, shard_tokens
from pretrain.config import MaskingConfig
from pretrain.data import Batcher, ShardSet


@pytest.fixture
def copy(shard_root, tmp_path):
    """A copy of the prepared data folder (seq128/, seq512/, vocab/); returns its seq128/."""
    shutil.copytree(shard_root, tmp_path / "data")
    return str(tmp_path / "data" / "seq128")


def edit_manifest(folder, change):
    path = os.path.join(folder, "manifest.json")
    manifest = json.load(open(path))
    change(manifest)
    open(path, "w").write(json.dumps(manifest, indent=1))
    return path


def refused_at_start(folder):
    with pytest.raises(FormatError) as caught:
        ShardSet(folder)
    line = str(caught.value)
    assert "\n" not in line
    return line


def test_shard_tokens_equal_the_sum_of_the_example_lengths(shard_root):
    for length in (128, 512):
        folder = os.path.join(shard_root, f"seq{length}")
        for entry in load_manifest(folder)["shards"]:
            table = open_shard(os.path.join(folder, entry["file"]))
            assert shard_tokens(table) == entry["tokens"] == pc.sum(pc.list_value_length(table["input_ids"])).as_py()
            part = table.slice(7, 50)  # offsets that do not start at 0
            assert shard_tokens(part) == pc.sum(pc.list_value_length(part["input_ids"])).as_py()


def both_counts(key):
    """Edits shard 1's `key` and the total with it, so that only the shard's file can tell."""
    def change(manifest):
        manifest["shards"][1][key] += 1
        manifest["totals"][key] += 1
    return change


EDITS = {  # what is edited -> (the edit, what the refusal names)
    "shard examples": (both_counts("examples"), "shards[1].examples"),
    "shard tokens": (both_counts("tokens"), "shards[1].tokens"),
    "totals.shards": (lambda m: m["totals"].update(shards=m["totals"]["shards"] + 1), "totals.shards is 4"),
    "totals.examples": (lambda m: m["totals"].update(examples=m["totals"]["examples"] - 1), "totals.examples"),
    "totals.sop_swapped": (lambda m: m["totals"].update(sop_swapped=0), "totals.sop_swapped is 0"),
    "vocab_size past uint16": (lambda m: m["tokenizer"].update(vocab_size=70000), "tokenizer.vocab_size 70000"),
    "vocab_size smaller": (lambda m: m["tokenizer"].update(vocab_size=5000), "tokenizer.vocab_size 5000"),
    "[MASK] id": (lambda m: m["tokenizer"]["special_token_ids"].update({"[MASK]": 9}), "tokenizer.special_token_ids"),
    "not a count": (lambda m: m["shards"][0].update(tokens="many"), "shards[0].tokens is 'many', not a count"),
    "schema": (lambda m: m.update(schema=m["schema"].replace("uint16", "uint32")), '"schema" is not the one'),
}


@pytest.mark.parametrize("edit", EDITS)
def test_a_hand_edited_manifest_is_refused_at_training_start_and_by_verify(copy, edit):
    change, names = EDITS[edit]
    manifest_path = edit_manifest(copy, change)
    line = refused_at_start(copy)
    assert names in line and manifest_path in line, line
    assert f"run `python -m data_prep verify {copy}`, then restore the manifest or remake the shard set" in line
    problems = verify_folder(copy)
    assert any(names in problem and manifest_path in problem for problem in problems), problems


def test_without_the_vocabulary_beside_vocab_size_is_checked_against_the_shards_schema(copy):
    """The vocabulary is optional for training (without whole-word masking); a vocab_size whose ids the shards'
    integer type cannot hold is still refused, and `verify` asks for the vocabulary."""
    shutil.rmtree(os.path.join(os.path.dirname(copy), "vocab"))
    edit_manifest(copy, lambda m: m["tokenizer"].update(vocab_size=70000))
    assert '"schema" is not the one tokenizer.vocab_size 70000 implies (token ids of uint32)' in refused_at_start(copy)
    assert any("no vocabulary beside the shard set" in problem for problem in verify_folder(copy))


def test_what_only_reading_every_token_shows_is_left_to_verify(copy):
    """A shard's `sop_swapped` (its labels summed) and token ids beyond `vocab_size` need every row read: a
    training start, which reads no shard whole, does not see them; `verify` does."""
    shutil.rmtree(os.path.join(os.path.dirname(copy), "vocab"))  # else vocab_size is checked against it
    edit_manifest(copy, lambda m: (m["shards"][0].update(sop_swapped=m["shards"][0]["sop_swapped"] + 1),
                                   m["totals"].update(sop_swapped=m["totals"]["sop_swapped"] + 1),
                                   m["tokenizer"].update(vocab_size=100)))
    ShardSet(copy)
    problems = "\n".join(verify_folder(copy))
    assert "swapped pairs, manifest says" in problems and "(shards[0].sop_swapped of" in problems
    assert "beyond tokenizer.vocab_size 100" in problems


@pytest.mark.parametrize("change", ["vocab.txt edited", "vocab.txt removed", "tokenizer.json removed"])
def test_a_vocabulary_whose_files_disagree_is_refused(copy, change):
    """Whole-word masking reads vocab.txt; the manifest records tokenizer.json's sha256: vocab.txt must be the
    wordpieces of that tokenizer.json in id order."""
    vocab = os.path.join(os.path.dirname(copy), "vocab")
    if change == "vocab.txt edited":
        lines = open(os.path.join(vocab, "vocab.txt"), encoding="utf-8").read().split("\n")
        lines[200], lines[201] = lines[201], lines[200]
        open(os.path.join(vocab, "vocab.txt"), "w", encoding="utf-8").write("\n".join(lines))
        expected = f"{vocab}/vocab.txt: sha256 "
    else:
        os.remove(os.path.join(vocab, change.split()[0]))
        expected = f"{vocab}/{change.split()[0]}: missing"
    line = refused_at_start(copy)
    assert line.startswith(expected) and "restore that one there, or remake the shards" in line, line
    assert any(problem.startswith(expected) for problem in verify_folder(copy))


def test_an_intact_shard_set_passes_and_whole_word_masking_reads_its_checked_vocabulary(shard_root):
    shards = ShardSet(os.path.join(shard_root, "seq128"))
    assert verify_folder(shards.folder) == []
    Batcher(shards, seed=0, masking=MaskingConfig(whole_word=True), max_predictions=20)

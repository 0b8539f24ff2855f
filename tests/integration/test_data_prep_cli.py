"""`python -m data_prep` end to end, in real processes, on real Wikipedia text."""

import fcntl
import filecmp
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, run_cli

SMALL_UNITS = ["--shard-text-mb", "0.04"]  # ~14 work units from 580 kB, to exercise scheduling and resume


def shard_files(out):
    return sorted(
        os.path.relpath(os.path.join(root, name), out)
        for root, _, names in os.walk(out)
        for name in names
        if name.endswith((".arrow", "manifest.json"))
    )


def assert_same_shards(left, right):
    files = shard_files(left)
    assert files == shard_files(right) and files
    mismatch = [f for f in files if not filecmp.cmp(os.path.join(left, f), os.path.join(right, f), shallow=False)]
    assert mismatch == []


@pytest.fixture(scope="module")
def reference(tmp_path_factory, small_corpus, vocab_dir):
    out = tmp_path_factory.mktemp("reference")
    run_cli("shards", "--source", small_corpus, "--vocab", vocab_dir, "--out", out, "--num-proc", "1", *SMALL_UNITS)
    return str(out)


def test_shard_sets_are_complete_and_readable(reference):
    import datasets

    for seq_len in (128, 512):
        folder = os.path.join(reference, f"seq{seq_len}")
        manifest = json.load(open(os.path.join(folder, "manifest.json")))
        assert manifest["seq_len"] == seq_len and manifest["format_version"] == 1
        assert manifest["inputs"]["documents"] == 21  # the sample's 7 + 14 articles
        assert manifest["totals"]["examples"] == sum(s["examples"] for s in manifest["shards"]) > 0
        assert manifest["tokenizer"]["vocab_size"] == 6000
        assert 0.4 < manifest["totals"]["sop_swapped"] / manifest["totals"]["examples"] < 0.6
        dataset = datasets.Dataset.from_file(os.path.join(folder, manifest["shards"][0]["file"]))
        assert dataset.num_rows == manifest["shards"][0]["examples"]
        assert str(dataset.features["input_ids"].feature.dtype) == "uint16"
        example = dataset[dataset.num_rows // 2]
        ids = example["input_ids"]
        assert len(ids) <= seq_len and ids[0] == 2 and ids[-1] == 3 and ids[example["a_length"] + 1] == 3
    assert run_cli("verify", reference).stdout.count(": ok") == 2


def test_inspect_json_and_stats(reference):
    result = run_cli("inspect", os.path.join(reference, "seq128"), "-n", "4", "--json")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    examples, stats = lines[:4], lines[4]["stats"]
    for example in examples:
        assert example["tokens"][0] == "[CLS]" and example["tokens"][-1] == "[SEP]"
        assert example["tokens"].count("[SEP]") == 2 and example["sop_label"] in (0, 1)
    assert stats["examples"] > 0 and 0 <= stats["padding_fraction_static"] < 1
    assert sum(stats["length_histogram"].values()) == stats["examples"]
    text = run_cli("inspect", reference, "-n", "1").stdout
    assert "SOP balance" in text and "A: " in text


def test_same_bytes_whatever_the_number_of_processes(reference, small_corpus, vocab_dir, tmp_path):
    run_cli("shards", "--source", small_corpus, "--vocab", vocab_dir, "--out", tmp_path, "--num-proc", "2",
            *SMALL_UNITS)
    assert_same_shards(reference, str(tmp_path))


def test_parts_together_are_the_single_run(reference, small_corpus, vocab_dir, tmp_path):
    for part in range(3):
        run_cli("shards", "--source", small_corpus, "--vocab", vocab_dir, "--out", tmp_path / f"part{part}",
                "--part", f"{part}/3", "--num-proc", "1", *SMALL_UNITS)
    for seq_len in ("seq128", "seq512"):
        single = json.load(open(os.path.join(reference, seq_len, "manifest.json")))["shards"]
        merged = []
        for part in range(3):
            manifest = json.load(open(tmp_path / f"part{part}" / seq_len / "manifest.json"))
            assert manifest["part"] == {"index": part, "count": 3}
            merged += manifest["shards"]
            for shard in manifest["shards"]:
                assert filecmp.cmp(os.path.join(reference, seq_len, shard["file"]),
                                   tmp_path / f"part{part}" / seq_len / shard["file"], shallow=False)
        assert sorted(merged, key=lambda s: s["unit"]) == single
    # `merge` makes exactly the single run's shard set, manifest included, byte for byte.
    run_cli("merge", "--parts", *[tmp_path / f"part{part}" for part in (2, 0, 1)], "--out", tmp_path / "merged")
    assert_same_shards(reference, str(tmp_path / "merged"))
    assert run_cli("verify", tmp_path / "merged").stdout.count(": ok") == 2
    one_line_error(run_cli("merge", "--parts", tmp_path / "part0", tmp_path / "part2", "--out", tmp_path / "m2",
                           check=False), "part(s) [1] of 3 missing")
    one_line_error(run_cli("merge", "--parts", tmp_path / "part0", tmp_path / "part0", tmp_path / "part1",
                           "--out", tmp_path / "m3", check=False), "given twice")


def test_a_manifest_entry_outside_its_folder_is_refused_and_changes_nothing(small_corpus, vocab_dir, tmp_path):
    """A part made elsewhere whose manifest names `../../victim.txt`: `merge` used to replace the victim (the
    file outside --out) with the attacker's file and exit 0. Every reader of that manifest refuses it in one
    line, and nothing is written: not the victim, not --out."""
    parts = tmp_path / "handed" / "over"
    common = ["shards", "--source", small_corpus, "--vocab", vocab_dir, "--num-proc", "1", "--quiet",
              "--shard-text-mb", "0.2", "--seq-len", "128"]
    for part in range(2):
        run_cli(*common, "--out", parts / f"part{part}", "--part", f"{part}/2")
    manifest_path = parts / "part1" / "seq128" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entry = manifest["shards"][0]
    (parts / "victim.txt").write_bytes(b"x" * 7)  # the "shard" the traversing name reaches from the part
    entry["file"], entry["bytes"] = "../../victim.txt", 7
    manifest_path.write_text(json.dumps(manifest))
    victim = tmp_path / "victim.txt"  # what the same name reaches from --out's seq128/
    victim.write_bytes(b"precious\n")
    before = victim.stat().st_mtime_ns
    result = run_cli("merge", "--parts", parts / "part0", parts / "part1", "--out", tmp_path / "merged", check=False)
    one_line_error(result, str(manifest_path), "shards[0]", "'../../victim.txt'", "not a plain file name")
    assert victim.read_bytes() == b"precious\n" and victim.stat().st_mtime_ns == before
    assert not (tmp_path / "merged").exists()
    for command in (["verify"], ["inspect", "-n", "1"]):
        one_line_error(run_cli(*command, parts / "part1" / "seq128", check=False),
                       str(manifest_path), "shards[0]", "not a plain file name")


def token_ngrams(folder, n=12):
    """Every run of n wordpieces (special tokens left out) in the examples of a shard set."""
    import datasets

    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    special = set(manifest["tokenizer"]["special_token_ids"].values())
    grams = set()
    for shard in manifest["shards"]:
        for ids in datasets.Dataset.from_file(os.path.join(folder, shard["file"]))["input_ids"]:
            ids = [i for i in ids if i not in special]
            grams.update(tuple(ids[k : k + n]) for k in range(len(ids) - n + 1))
    return grams


def test_held_out_split_is_by_document_and_deterministic(heldout_shard_root, reference, small_corpus, vocab_dir,
                                                          tmp_path):
    """--holdout-fraction: whole documents go to seqN-heldout/ (no run of 12 wordpieces in both splits, and the
    documents and tokens of the two splits add up to the input's); the same bytes for 1 or 2 processes and
    for two parts merged; without it, no held-out folder."""
    options = ["--source", small_corpus, "--vocab", vocab_dir, "--shard-text-mb", "0.2", "--holdout-fraction", "0.2"]
    run_cli("shards", *options, "--out", tmp_path / "two", "--num-proc", "2", "--quiet")
    assert_same_shards(heldout_shard_root, str(tmp_path / "two"))
    for part in range(2):
        run_cli("shards", *options, "--out", tmp_path / f"part{part}", "--part", f"{part}/2", "--num-proc", "1",
                "--quiet")
    run_cli("merge", "--parts", tmp_path / "part1", tmp_path / "part0", "--out", tmp_path / "merged")
    assert_same_shards(heldout_shard_root, str(tmp_path / "merged"))
    assert run_cli("verify", heldout_shard_root).stdout.count(": ok") == 4
    assert not any("heldout" in name for name in os.listdir(reference))
    whole = json.load(open(os.path.join(reference, "seq128", "manifest.json")))["inputs"]
    for seq_len in (128, 512):
        train_folder = os.path.join(heldout_shard_root, f"seq{seq_len}")
        held_folder = os.path.join(heldout_shard_root, f"seq{seq_len}-heldout")
        train, held = (json.load(open(os.path.join(f, "manifest.json"))) for f in (train_folder, held_folder))
        assert (train["split"], held["split"]) == ("train", "heldout") and held["totals"]["examples"] > 0
        assert 0 < held["inputs"]["documents"] < whole["documents"] / 2
        for key in ("documents", "sentences", "tokens"):
            assert train["inputs"][key] + held["inputs"][key] == whole[key], key
        assert not token_ngrams(train_folder) & token_ngrams(held_folder)
    inspect = run_cli("inspect", os.path.join(heldout_shard_root, "seq128-heldout"), "-n", "1").stdout
    assert "SOP balance" in inspect


def test_merge_refuses_parts_made_with_another_seed_or_vocabulary(small_corpus, vocab_dir, tmp_path):
    """Parts must agree on everything that changes the bytes: one made with another seed or vocabulary would
    make a shard set no single run could make."""
    common = ["shards", "--source", small_corpus, "--num-proc", "1", "--quiet", "--shard-text-mb", "0.2"]
    run_cli(*common, "--vocab", vocab_dir, "--out", tmp_path / "part0", "--part", "0/2")
    run_cli(*common, "--vocab", vocab_dir, "--out", tmp_path / "part1-seed", "--part", "1/2", "--seed", "7")
    one_line_error(run_cli("merge", "--parts", tmp_path / "part0", tmp_path / "part1-seed", "--out",
                           tmp_path / "m1", check=False), "made with other settings than")
    other_vocab = tmp_path / "vocab-other"
    run_cli("vocab", "--source", small_corpus, "--out", other_vocab, "--vocab-size", "5000")
    run_cli(*common, "--vocab", other_vocab, "--out", tmp_path / "part1-vocab", "--part", "1/2")
    one_line_error(run_cli("merge", "--parts", tmp_path / "part0", tmp_path / "part1-vocab", "--out",
                           tmp_path / "m2", check=False), "made with another vocabulary")
    assert not (tmp_path / "m1").exists() and not (tmp_path / "m2").exists()


def test_kill_and_rerun_gives_identical_shards(reference, small_corpus, vocab_dir, tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "data_prep", "shards", "--source", small_corpus, "--vocab", vocab_dir,
               "--out", str(out), "--num-proc", "2", "--quiet", *SMALL_UNITS]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = out / "seq512" / ".progress"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if progress.is_dir() and len(os.listdir(progress)) >= 2:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed; use smaller units"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "seq128" / "manifest.json").exists()  # a killed run is never taken as complete
    finished = {path: (path.stat().st_ino, path.stat().st_mtime_ns) for path in out.glob("seq*/*.arrow")}
    assert finished, "no unit had finished when the run was killed"
    run_cli(*command[3:])  # the same command again
    assert_same_shards(reference, str(out))
    # the finished units' shards were kept, not made again
    assert {path: (path.stat().st_ino, path.stat().st_mtime_ns) for path in finished} == finished
    again = run_cli(*command[3:])
    assert "nothing to do" in again.stderr


def test_a_run_killed_while_it_removed_its_unit_records_is_complete_on_rerun(reference, small_corpus, vocab_dir,
                                                                             tmp_path):
    """The manifests are written once every unit is done, then the per-unit records are removed: a kill in
    between leaves some records behind, and the rerun must not take them for work to redo."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(reference, out)
    leftover = out / "seq512" / ".progress"
    leftover.mkdir()
    (leftover / "unit-000003.json").write_text("{}")
    shards = {path: path.stat().st_mtime_ns for path in out.glob("seq*/*.arrow")}
    again = run_cli("shards", "--source", small_corpus, "--vocab", vocab_dir, "--out", out, "--num-proc", "1",
                    *SMALL_UNITS)
    assert "nothing to do" in again.stderr and not leftover.exists()
    assert {path: path.stat().st_mtime_ns for path in shards} == shards
    assert_same_shards(reference, str(out))


def test_verify_names_a_corrupt_or_truncated_shard(reference, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(reference, copy)
    manifest = json.load(open(copy / "seq128" / "manifest.json"))
    corrupt, truncated = manifest["shards"][0]["file"], manifest["shards"][1]["file"]
    with open(copy / "seq128" / corrupt, "r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with open(copy / "seq128" / truncated, "r+b") as handle:
        handle.truncate(500)
    result = run_cli("verify", copy, check=False)
    assert result.returncode == 1
    assert f"{corrupt}: sha256 differs" in result.stderr and f"{truncated}: 500 bytes" in result.stderr
    assert "seq512: ok" in result.stdout
    # a missing shard, and a manifest whose count no longer matches an intact shard
    long_manifest = json.load(open(copy / "seq512" / "manifest.json"))
    missing, miscounted = long_manifest["shards"][0], long_manifest["shards"][1]
    os.remove(copy / "seq512" / missing["file"])
    miscounted["examples"] += 1
    (copy / "seq512" / "manifest.json").write_text(json.dumps(long_manifest))
    result = run_cli("verify", copy / "seq512", check=False)
    assert result.returncode == 1 and f"{missing['file']}: missing" in result.stderr
    assert f"{miscounted['file']}: {miscounted['examples'] - 1} examples, manifest says" in result.stderr


def test_verify_names_a_shard_of_the_wrong_schema(reference, tmp_path):
    """A shard whose bytes match the manifest (rewritten, manifest updated) but whose token column is int32."""
    import shutil

    import pyarrow as pa

    from formats.shards import open_shard, write_shard

    copy = tmp_path / "copy"
    shutil.copytree(os.path.join(reference, "seq128"), copy)
    manifest = json.load(open(copy / "manifest.json"))
    entry = manifest["shards"][0]
    table = open_shard(str(copy / entry["file"]))
    wrong = table.set_column(0, "input_ids", table.column("input_ids").cast(pa.list_(pa.int32())))
    entry.update({k: v for k, v in write_shard(str(copy / entry["file"]), wrong).items() if k in ("bytes", "sha256")})
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = run_cli("verify", copy, check=False)
    assert result.returncode == 1 and f"{entry['file']}: schema" in result.stderr, result.stderr


def test_dupe_factor_and_the_sentence_cap(reference, small_corpus, vocab_dir, tmp_path):
    """--dupe-factor 2: two pairings of every document (about twice the examples, the second pass not a copy of
    the first); --max-sentence-tokens 16: longer sentences cut into pieces (more input sentences, same tokens)."""
    import datasets

    def examples(out):
        folder = os.path.join(out, "seq128")
        manifest = json.load(open(os.path.join(folder, "manifest.json")))
        rows = [tuple(ids) for shard in manifest["shards"]
                for ids in datasets.Dataset.from_file(os.path.join(folder, shard["file"]))["input_ids"]]
        return manifest, rows

    common = ["--source", small_corpus, "--vocab", vocab_dir, "--num-proc", "1", "--seq-len", "128", *SMALL_UNITS]
    run_cli("shards", *common, "--out", tmp_path / "dupe", "--dupe-factor", "2")
    run_cli("shards", *common, "--out", tmp_path / "cap", "--max-sentence-tokens", "16")
    base, base_rows = examples(reference)
    dupe, dupe_rows = examples(tmp_path / "dupe")
    assert 1.8 < len(dupe_rows) / len(base_rows) < 2.2
    assert len(set(dupe_rows)) > 1.5 * len(set(base_rows))  # the passes draw other pairings
    cap, _ = examples(tmp_path / "cap")
    assert cap["inputs"]["tokens"] == base["inputs"]["tokens"]
    assert cap["inputs"]["sentences"] > 1.5 * base["inputs"]["sentences"]


def one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_bad_input_gives_one_line_errors(vocab_dir, tmp_path):
    one_line_error(run_cli("shards", "--source", tmp_path / "missing", "--vocab", vocab_dir, "--out", tmp_path / "o",
                           check=False), "missing", "no such file")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_bytes(b"")
    (tmp_path / "empty" / "b.txt").write_bytes(b"\n\n  \n")
    result = run_cli("shards", "--source", tmp_path / "empty", "--vocab", vocab_dir, "--out", tmp_path / "o2",
                     "--quiet", check=False)
    one_line_error(result, "no usable documents", "empty_file")
    assert not (tmp_path / "o2" / "seq128" / "manifest.json").exists()
    (tmp_path / "a_file").write_text("x")
    one_line_error(run_cli("shards", "--source", tmp_path / "empty", "--vocab", vocab_dir,
                           "--out", tmp_path / "a_file" / "out", check=False), "--out", "cannot write")
    one_line_error(run_cli("shards", "--source", tmp_path / "empty", "--vocab", tmp_path, "--out", tmp_path / "o3",
                           check=False), "--vocab", "tokenizer.json")
    one_line_error(run_cli("shards", "--source", tmp_path / "empty", "--vocab", vocab_dir, "--out", tmp_path / "o4",
                           "--part", "3/3", check=False), "--part")


def test_bad_flag_values_give_one_line_and_no_usage_block(small_corpus, vocab_dir, tmp_path):
    out = tmp_path / "out"
    shards = ["shards", "--source", small_corpus, "--vocab", vocab_dir, "--out", out]
    one_line_error(run_cli(*shards, "--num-proc", "abc", check=False),
                   "data_prep: error: argument --num-proc: invalid int value: 'abc'", "--help")
    one_line_error(run_cli(*shards, "--shard-text-mb", "-1", check=False), "--shard-text-mb -1.0: must be positive")
    one_line_error(run_cli(*shards[:-2], check=False), "required: --out", "(see python -m data_prep shards --help)")
    one_line_error(run_cli("shard", check=False), "invalid choice: 'shard'")
    one_line_error(run_cli("vocab", "--source", small_corpus, "--out", out, "--vocab-size", "many", check=False),
                   "--vocab-size")
    assert not out.exists()  # rejected before any work
    helped = run_cli("shards", "--help")
    assert helped.stdout.startswith("usage: python -m data_prep shards") and "--shard-text-mb" in helped.stdout


def test_damaged_parquet_or_no_text_column_is_named_before_any_work(small_corpus, vocab_dir, tmp_path):
    """The bad file comes after a good source: it is still named before the good one is read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    pq.write_table(pa.table({"text": ["A sentence. Another one."] * 100}), corpus / "part-0.parquet")
    data = (corpus / "part-0.parquet").read_bytes()
    (corpus / "part-1.parquet").write_bytes(data[: len(data) - 100])  # a download cut short: no footer
    out = tmp_path / "out"
    result = run_cli("shards", "--source", small_corpus, "--source", corpus, "--vocab", vocab_dir, "--out", out,
                     check=False)
    one_line_error(result, f"{corpus / 'part-1.parquet'}: not a readable parquet file", "re-download")
    (corpus / "part-1.parquet").unlink()
    pq.write_table(pa.table({"id": [1], "title": ["T"]}), corpus / "part-2.parquet")
    result = run_cli("shards", "--source", small_corpus, "--source", corpus, "--vocab", vocab_dir, "--out", out,
                     check=False)
    one_line_error(result, f"{corpus / 'part-2.parquet'}: has no 'text' column (columns: id, title)")
    result = run_cli("vocab", "--source", small_corpus, "--source", f"wikipedia:20231101.en={corpus}",
                     "--out", out, check=False)
    one_line_error(result, "part-2.parquet: has no 'text' column")
    assert not out.exists()


def test_ctrl_c_exits_130_with_one_line_and_the_same_command_resumes(reference, small_corpus, vocab_dir, tmp_path):
    out = tmp_path / "interrupted"
    command = [sys.executable, "-m", "data_prep", "shards", "--source", small_corpus, "--vocab", vocab_dir,
               "--out", str(out), "--num-proc", "2", "--quiet", *SMALL_UNITS]
    # A session of its own stands for the terminal's foreground process group: Ctrl-C signals every process
    # in it, the workers included, not only the main process.
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    progress = out / "seq512" / ".progress"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if progress.is_dir() and os.listdir(progress):
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be interrupted; use smaller units"
    workers = children_of(process.pid)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["data_prep: interrupted; rerun the same command to resume"], stderr
    assert not (out / "seq128" / "manifest.json").exists() and not (out / "seq512" / "manifest.json").exists()
    assert workers and wait_until_gone(workers) == []
    run_cli(*command[3:])  # the same command again
    assert_same_shards(reference, str(out))


def children_of(pid):
    children = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rpartition(")")[2].split()  # after the command name, which may hold spaces
        except (OSError, ValueError):
            continue  # not a process, or one that just ended
        if int(fields[1]) == pid:
            children.append(int(entry))
    return children


def wait_until_gone(pids, timeout=10.0):
    """The pids still running after `timeout` seconds (a zombie has ended: only its exit status is left)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as handle:
                    if handle.read().rpartition(")")[2].split()[0] != "Z":
                        alive.append(pid)
            except OSError:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def test_changed_settings_do_not_mix_into_an_existing_output(reference, small_corpus, vocab_dir):
    result = run_cli("shards", "--source", small_corpus, "--vocab", vocab_dir, "--out", reference, "--seed", "7",
                     *SMALL_UNITS, check=False)
    one_line_error(result, "other settings", "seed")


def test_disk_full_is_a_clear_error_and_a_rerun_completes(small_corpus, vocab_dir, tmp_path):
    """A file-size limit makes writes fail with EFBIG, as a full disk fails them with ENOSPC."""
    out = tmp_path / "full"
    largest_small_file = max(os.path.getsize(os.path.join(vocab_dir, n)) for n in os.listdir(vocab_dir))
    limit = largest_small_file + 4096  # the vocabulary copies fit, a shard of the whole sample does not
    command = ["shards", "--source", small_corpus, "--vocab", vocab_dir, "--out", str(out), "--num-proc", "1",
               "--quiet", "--shard-text-mb", "1"]

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = run_cli(*command, check=False, preexec_fn=limit_file_size)
    one_line_error(result, "disk full", ".arrow")
    assert not any(name.endswith(".tmp") for _, _, names in os.walk(out) for name in names)
    assert not (out / "seq128" / "manifest.json").exists()
    run_cli(*command)
    assert run_cli("verify", out).stdout.count(": ok") == 2


def test_vocab_import_round_trip(vocab_dir, tmp_path):
    run_cli("vocab", "--import-vocab", os.path.join(vocab_dir, "vocab.txt"), "--out", tmp_path)
    assert open(tmp_path / "vocab.txt").read() == open(os.path.join(vocab_dir, "vocab.txt")).read()
    import shutil

    from tokenizers import Tokenizer
    from transformers import SqueezeBertTokenizer

    only_vocab_txt = tmp_path / "vocab_txt_only"
    only_vocab_txt.mkdir()
    shutil.copy(tmp_path / "vocab.txt", only_vocab_txt)
    text = "Anarchism is a political philosophy, Über-simple; naïve 1984."
    ours = Tokenizer.from_file(str(tmp_path / "tokenizer.json")).encode(text).ids
    for folder in (only_vocab_txt, tmp_path):  # what transformers reads: vocab.txt alone, or tokenizer.json
        assert SqueezeBertTokenizer.from_pretrained(str(folder))(text)["input_ids"] == ours
    one_line_error(run_cli("vocab", "--import-vocab", tmp_path / "nope.txt", "--out", tmp_path / "v", check=False),
                   "--import-vocab", "no such file")


def test_inspect_into_head_exits_0_quietly(shard_root):
    """`inspect | head`: head closes the pipe early; that is not an error."""
    result = subprocess.run(
        f"set -o pipefail; {sys.executable} -m data_prep inspect {shard_root}/seq128 -n 2000 | head -n 3",
        shell=True, executable="/bin/bash", cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr == "" and len(result.stdout.splitlines()) == 3


def test_skipped_rows_are_counted_by_reason_and_the_first_five_named(small_corpus, vocab_dir, tmp_path):
    """Rows without text, bad JSON lines and documents with no token are skipped and counted in the
    manifest; stderr names the first 5 of each reason, then says the rest are only counted."""
    good = open(os.path.join(small_corpus, sorted(os.listdir(small_corpus))[0]), encoding="utf-8").read()
    lines = [json.dumps({"text": good})]
    lines += ["{not json"] * 7  # bad_json_line x 7
    lines += [json.dumps({"title": "no text"}), json.dumps({"text": None})]  # row_without_text x 2
    lines += [json.dumps({"text": "\u200b\u200b\n\u2060"})]  # visible to strip(), no wordpiece: no token
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run_cli("shards", "--source", tmp_path / "rows.jsonl", "--vocab", vocab_dir, "--out", tmp_path / "out",
                     "--num-proc", "1")
    named = re.findall(r"data_prep: skipped \(bad_json_line\): \S+:(\d+)", result.stderr)  # beside the bar
    assert named == ["2", "3", "4", "5", "6"]  # the first 5 line numbers
    assert "data_prep: further 'bad_json_line' skips are only counted" in result.stderr
    assert result.stderr.count("skipped (row_without_text)") == 2
    manifest = json.loads((tmp_path / "out" / "seq128" / "manifest.json").read_text())
    assert manifest["skipped"]["bad_json_line"] == 7 and manifest["skipped"]["row_without_text"] == 2
    assert manifest["skipped"]["document_without_tokens"] == 1


def test_a_second_run_on_the_same_output_is_refused_while_the_first_holds_it(small_corpus, vocab_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".lock", "w") as lock:  # what a running `data_prep shards` holds for its whole run
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = run_cli("shards", "--source", small_corpus, "--vocab", vocab_dir, "--out", out, check=False)
        one_line_error(result, "--out", "another data_prep run is writing there")
    run_cli("shards", "--source", small_corpus, "--vocab", vocab_dir, "--out", out, "--quiet")  # released: runs


def peak_memory_mb(command) -> tuple[float, float]:
    """Runs `command`; the peak resident memory (VmHWM, a high-water mark, so sampling misses nothing it had
    reached by the last read) of its main process and of its largest worker, in MB."""
    def high_water_mb(pid):
        try:
            with open(f"/proc/{pid}/status") as handle:
                return next(int(line.split()[1]) / 1024 for line in handle if line.startswith("VmHWM:"))
        except (OSError, StopIteration):
            return 0.0  # ended (or a zombie) since it was listed

    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    main = workers = 0.0
    while process.poll() is None:
        main = max(main, high_water_mb(process.pid))
        workers = max([workers] + [high_water_mb(child) for child in children_of(process.pid)])
        time.sleep(0.02)
    assert process.returncode == 0, process.stderr.read()[-3000:]
    return main, workers


def test_memory_stays_bounded_whatever_the_input_size(small_corpus, vocab_dir, tmp_path):
    """README: at most two units per worker in flight, so five times the input (4.6 → 23 MB of text, ~90
    units of 0.25 MB) leaves the peaks where they were. Checked to fail: with the in-flight bound removed,
    the main process's peak grew by 25 MB (the reader runs ahead of the workers and holds the text)."""
    sample = sorted(os.path.join(small_corpus, name) for name in os.listdir(small_corpus) if name.startswith("wiki_"))
    peaks = {}
    for copies in (8, 40):
        source = tmp_path / f"in{copies}"
        source.mkdir()
        for copy in range(copies):
            for path in sample:
                with open(path, "rb") as handle:
                    (source / f"{copy:03d}_{os.path.basename(path)}").write_bytes(handle.read())
        peaks[copies] = peak_memory_mb([
            sys.executable, "-m", "data_prep", "shards", "--source", source, "--vocab", vocab_dir,
            "--out", tmp_path / f"out{copies}", "--num-proc", "2", "--shard-text-mb", "0.25", "--seq-len", "128",
            "--quiet",
        ])
    extra_input_mb = 32 * sum(os.path.getsize(p) for p in sample) / 2**20
    (small_main, small_workers), (large_main, large_workers) = peaks[8], peaks[40]
    assert large_main - small_main < extra_input_mb / 3, (peaks, extra_input_mb)
    assert large_workers - small_workers < extra_input_mb / 3, (peaks, extra_input_mb)

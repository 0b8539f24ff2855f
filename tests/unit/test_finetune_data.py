"""GLUE loading from every source form, checked against an independent reading of the fixtures (pandas),
and the metrics of every task against scikit-learn / scipy on the same predictions."""

import csv
import json
import os

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from finetune.data import fingerprint, load_task
from finetune.glue_files import DataError
from finetune.metrics import main_metric, split_metrics
from finetune.predictions import write_predictions
from finetune.tasks import TASKS, TaskError, get_task
from tests.conftest import ASSETS, ROOT

GLUE = os.path.join(ASSETS, "glue")
# what the fixture files hold, read independently: (file, header?, text columns, label column)
INDEPENDENT = {
    "cola": (None, [3], 1), "sst2": (0, ["sentence"], "label"), "mrpc": (0, ["#1 String", "#2 String"], "Quality"),
    "stsb": (0, ["sentence1", "sentence2"], "score"), "qqp": (0, ["question1", "question2"], "is_duplicate"),
    "mnli": (0, ["sentence1", "sentence2"], "gold_label"), "qnli": (0, ["question", "sentence"], "label"),
    "rte": (0, ["sentence1", "sentence2"], "label"), "wnli": (0, ["sentence1", "sentence2"], "label"),
}
HUB_IDS = {"entailment": 0, "not_entailment": 1}
MNLI_IDS = {"entailment": 0, "neutral": 1, "contradiction": 2}


def pandas_split(task, file_name):
    header, text_columns, label_column = INDEPENDENT[task.name]
    frame = pd.read_csv(os.path.join(GLUE, task.glue_dir, file_name), sep="\t", quoting=csv.QUOTE_NONE,
                        header=header, keep_default_na=False, dtype=str, on_bad_lines="skip")
    frame = frame[frame[label_column] != ""]  # pandas pads a short row (QQP's) where the loader skips it
    labels = frame[label_column].tolist()
    if task.name == "stsb":
        labels = [float(x) for x in labels]
    elif task.name == "mnli":
        labels = [MNLI_IDS[x] for x in labels]
    elif task.name in ("qnli", "rte"):
        labels = [HUB_IDS[x] for x in labels]
    else:
        labels = [int(x) for x in labels]
    return [frame[c].tolist() for c in text_columns], labels


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_loads_as_an_independent_reader_reads_it(name):
    task = get_task(name)
    splits = load_task(task, GLUE)
    dev_file = "dev_matched.tsv" if name == "mnli" else "dev.tsv"
    for split, file_name in (("train", "train.tsv"), (task.dev_splits[0], dev_file)):
        texts, labels = pandas_split(task, file_name)
        assert [splits[split][c] for c in task.text_columns] == texts
        assert splits[split]["label"] == pytest.approx(labels)
    for split in task.test_splits:
        if split != "ax":
            assert set(splits[split]["label"]) == {-1} and len(splits[split]) == 8
    if name == "qqp":  # the truncated row is skipped, not read into the next one
        assert len(splits["train"]) == 40
    if name == "mnli":
        assert {"validation_mismatched", "test_mismatched", "ax"} <= set(splits)


@pytest.mark.parametrize("name", list(TASKS))
def test_metrics_match_sklearn_and_scipy(name):
    task = get_task(name)
    rng = np.random.default_rng(len(name))
    labels = np.asarray(load_task(task, GLUE, with_test=False)[task.dev_splits[0]]["label"])
    if task.is_regression:
        outputs = labels + rng.normal(0, 1.5, size=labels.shape)
        values = split_metrics(task, outputs[:, None], labels)
        assert values["pearson"] == pytest.approx(scipy.stats.pearsonr(outputs, labels)[0], abs=1e-9)
        assert values["spearman"] == pytest.approx(scipy.stats.spearmanr(outputs, labels)[0], abs=1e-9)
        assert main_metric(task, values) == pytest.approx((values["pearson"] + values["spearman"]) / 2)
        return
    outputs = rng.normal(size=(len(labels), task.num_labels))
    predictions = outputs.argmax(-1)
    values = split_metrics(task, outputs, labels)
    if name == "cola":
        assert values["mcc"] == pytest.approx(matthews_corrcoef(labels, predictions), abs=1e-9)
    else:
        assert values["accuracy"] == pytest.approx(accuracy_score(labels, predictions))
    if "f1" in task.metric_names:
        assert values["f1"] == pytest.approx(f1_score(labels, predictions, zero_division=0))


def test_mcc_matches_sklearn_on_multiclass_and_constant_predictions():
    rng = np.random.default_rng(0)
    for _ in range(20):
        labels, predictions = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
        from finetune.metrics import matthews_correlation
        assert matthews_correlation(predictions, labels) == pytest.approx(matthews_corrcoef(labels, predictions))
    assert matthews_correlation(np.zeros(10, int), rng.integers(0, 2, 10)) == 0.0


def test_every_local_form_gives_the_same_data(tmp_path):
    """The same splits as jsonl, csv, parquet (the hub's file names) and a datasets folder."""
    import datasets

    task = get_task("mrpc")
    splits = load_task(task, GLUE)
    expected = {split: fingerprint(data) for split, data in splits.items()}
    for form in ("jsonl", "csv", "parquet", "disk"):
        folder = tmp_path / form / "mrpc"
        folder.mkdir(parents=True)
        for split, data in splits.items():
            name = {"validation": "dev"}.get(split, split) if form == "csv" else split
            if form == "jsonl":
                data.to_json(str(folder / f"{name}.jsonl"))
            elif form == "csv":
                data.to_csv(str(folder / f"{name}.csv"), index=False)
            elif form == "parquet":
                data.to_parquet(str(folder / f"{name}-00000-of-00001.parquet"))
        if form == "disk":
            datasets.DatasetDict(splits).save_to_disk(str(folder))
        loaded = load_task(task, str(tmp_path / form))
        assert {split: fingerprint(data) for split, data in loaded.items()} == expected, form


def write_tsv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(map(str, row)) + "\n" for row in rows))


def test_bad_data_is_one_error_naming_the_file(tmp_path):
    with pytest.raises(TaskError, match="unknown task"):
        get_task("squad")
    rte = get_task("rte")
    header = ["index", "sentence1", "sentence2", "label"]
    write_tsv(tmp_path / "RTE" / "train.tsv", [header, [0, "a", "b", "entailment"]])
    with pytest.raises(DataError, match=r"RTE/dev.tsv: the validation split of rte is missing"):
        load_task(rte, str(tmp_path))
    write_tsv(tmp_path / "RTE" / "dev.tsv", [header, [0, "a", "b", "maybe"]])
    with pytest.raises(DataError, match=r"dev.tsv:2: label 'maybe' is outside the labels of rte"):
        load_task(rte, str(tmp_path))
    write_tsv(tmp_path / "RTE" / "dev.tsv", [["index", "premise", "sentence2", "label"], [0, "a", "b", "entailment"]])
    with pytest.raises(DataError, match=r"dev.tsv: no column \['sentence1'\]"):
        load_task(rte, str(tmp_path))
    jsonl = tmp_path / "files" / "sst2"
    jsonl.mkdir(parents=True)
    (jsonl / "train.jsonl").write_text('{"sentence": "good", "label": 1}\n')
    (jsonl / "validation.jsonl").write_text('{"sentence": "bad", "label": 2}\n')
    with pytest.raises(DataError, match=r"label 2, outside the labels of sst2"):
        load_task(get_task("sst2"), str(tmp_path / "files"))
    (jsonl / "validation.jsonl").write_text('{"text": "bad", "label": 0}\n')
    with pytest.raises(DataError, match=r"no column \['sentence'\]"):
        load_task(get_task("sst2"), str(tmp_path / "files"))
    with pytest.raises(DataError, match="no such folder"):
        load_task(rte, str(tmp_path / "nowhere"))


def test_server_files_have_the_glue_format(tmp_path):
    mnli, stsb, rte = get_task("mnli"), get_task("stsb"), get_task("rte")
    logits = np.array([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0]])
    assert write_predictions(mnli, {"test_matched": ([0, 1, 2], logits), "test_mismatched": ([5, 6, 7], logits),
                                    "ax": ([0, 1, 2], logits)}, str(tmp_path / "m")) == \
        ["MNLI-m.tsv", "MNLI-mm.tsv", "AX.tsv"]
    assert (tmp_path / "m" / "MNLI-mm.tsv").read_text() == \
        "index\tprediction\n5\tentailment\n6\tneutral\n7\tcontradiction\n"
    write_predictions(stsb, {"test": ([0, 1], np.array([[5.7], [2.25]]))}, str(tmp_path / "s"))
    assert (tmp_path / "s" / "STS-B.tsv").read_text() == "index\tprediction\n0\t5.000\n1\t2.250\n"
    write_predictions(rte, {"test": ([0, 1], np.array([[0.0, 1.0], [1.0, 0.0]]))}, str(tmp_path / "r"))
    assert (tmp_path / "r" / "RTE.tsv").read_text() == "index\tprediction\n0\tnot_entailment\n1\tentailment\n"
    write_predictions(get_task("cola"), {"test": ([0], np.array([[0.0, 1.0]]))}, str(tmp_path / "c"))
    assert (tmp_path / "c" / "CoLA.tsv").read_text() == "index\tprediction\n0\t1\n"


def test_the_shipped_finetune_configs_load():
    """configs/finetune/: the chain config resolves into its runs (MNLI, seven tasks from its headless model,
    and the eight runs without a teacher) and the one-task config into the model card's settings."""
    from finetune.__main__ import build_parser
    from finetune.chain import load_chain_config, run_configs
    from finetune.config import build_config, read_toml

    folder = os.path.join(ROOT, "configs", "finetune")
    chain = load_chain_config(build_parser().parse_args(["chain", "--config", os.path.join(folder,
                                                                                           "chain-paper.toml")]))
    runs = run_configs(chain)
    assert [(regime, config.task) for regime, config in runs][:2] == [("with", "mnli"), ("with", "rte")]
    assert len(runs) == 1 + 7 + 8 and all(config.alpha == 0.5 for _, config in runs)
    assert runs[0][1].headless and runs[0][1].eval_every_steps == 2000 and runs[0][1].teacher == "teachers/mnli"
    assert runs[1][1].model.endswith(os.path.join("mnli", "headless"))
    rte = build_config(("", read_toml(os.path.join(folder, "glue-rte.toml"))))
    assert (rte.task, rte.learning_rate, rte.batch_size, rte.max_length) == ("rte", 3e-5, 16, 128)


@pytest.mark.parametrize("form", ["jsonl", "csv"])
def test_labels_that_mix_names_and_ids_are_one_error_naming_the_file_and_rows(tmp_path, form):
    """`1` beside `"entailment"`: the id's meaning depends on an order the file does not state, so it is
    refused, not guessed; a split written one way (all names, or all ids) loads."""
    folder = tmp_path / "rte"
    folder.mkdir()
    rows = [("a", "b", 1), ("c", "d", "entailment")]
    for split in ("train", "validation"):
        if form == "jsonl":
            lines = [json.dumps({"sentence1": a, "sentence2": b, "label": label}) for a, b, label in rows]
        else:
            lines = ["sentence1,sentence2,label", *(f"{a},{b},{label}" for a, b, label in rows)]
        (folder / f"{split}.{form}").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as raised:
        load_task(get_task("rte"), str(tmp_path), with_test=False)
    message = str(raised.value)
    assert message.startswith(f"{folder / f'train.{form}'}: labels mix names and numbers (row 1 has 'entailment', "
                              "row 0 has ")
    assert message.endswith("write every label of the split one way: all ids 0..1 or all names "
                            "['entailment', 'not_entailment']") and "\n" not in message
    if form == "jsonl":  # the same meaning written one way loads
        for split in ("train", "validation"):
            (folder / f"{split}.jsonl").write_text("".join(json.dumps({"sentence1": "a", "sentence2": "b",
                                                                       "label": label}) + "\n"
                                                           for label in ("entailment", "not_entailment")))
        assert load_task(get_task("rte"), str(tmp_path), with_test=False)["train"]["label"] == [0, 1]


@pytest.mark.parametrize("glue_dir", ["SST-2", "QQP"])
def test_a_byte_order_mark_at_the_start_of_a_tsv_is_ignored(tmp_path, glue_dir):
    """Excel and some editors start a UTF-8 file with a BOM. SST-2's first header is a text column (refused as
    missing before); QQP's is `id` (its test ids silently became row numbers before)."""
    task = next(task for task in TASKS.values() if task.glue_dir == glue_dir)
    (tmp_path / glue_dir).mkdir()
    for name in os.listdir(os.path.join(GLUE, glue_dir)):
        with open(os.path.join(GLUE, glue_dir, name), "rb") as handle:
            (tmp_path / glue_dir / name).write_bytes(b"\xef\xbb\xbf" + handle.read())
    expected = load_task(task, GLUE)
    loaded = load_task(task, str(tmp_path))
    assert {split: fingerprint(data) for split, data in loaded.items()} == \
        {split: fingerprint(data) for split, data in expected.items()}


@pytest.mark.parametrize("form", ["disk", "parquet"])
def test_mnli_saved_with_class_encode_column_gets_the_tsv_labels_row_by_row(tmp_path, form):
    """`class_encode_column` names MNLI's classes alphabetically (contradiction, entailment, neutral); a datasets
    folder, or parquet files (which carry the feature), keep those ids. Mapped by name, every row's label is
    the TSV's; before, every one was shifted."""
    import datasets

    mnli = get_task("mnli")
    tsv = load_task(mnli, GLUE, with_test=False)
    encoded = {}
    for split, data in tsv.items():
        named = data.map(lambda row: {"label": mnli.label_names[row["label"]]})
        encoded[split] = named.class_encode_column("label")
    assert encoded["train"].features["label"].names == ["contradiction", "entailment", "neutral"]
    folder = tmp_path / "MNLI"
    if form == "disk":
        datasets.DatasetDict(encoded).save_to_disk(str(folder))
    else:
        folder.mkdir()
        for split, data in encoded.items():
            data.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    loaded = load_task(mnli, str(tmp_path), with_test=False)
    for split, data in tsv.items():
        assert loaded[split]["label"] == data["label"], split
        assert loaded[split]["premise"] == data["premise"], split


def test_class_labels_that_are_not_the_tasks_are_one_error_and_unnamed_ones_are_checked_by_range(tmp_path):
    import datasets

    rte = get_task("rte")
    rows = {"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [0, 1]}
    for names, problem in ((["negative", "positive"], "its labels are ['negative', 'positive'], not rte's"),
                           (None, None), (["0", "1", "2"], "row 0 has label 2")):
        features = datasets.Features({"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string"),
                                      "label": datasets.ClassLabel(names=names or ["0", "1"])})
        labels = [2, 1] if names == ["0", "1", "2"] else [0, 1]
        data = datasets.Dataset.from_dict({**rows, "label": labels}, features=features)
        folder = tmp_path / str(names) / "rte"
        datasets.DatasetDict({"train": data, "validation": data}).save_to_disk(str(folder))
        if problem is None:
            assert load_task(rte, str(folder.parent), with_test=False)["train"]["label"] == [0, 1]
            continue
        with pytest.raises(DataError) as raised:
            load_task(rte, str(folder.parent), with_test=False)
        assert str(folder) in str(raised.value) and problem in str(raised.value) and "\n" not in str(raised.value)


def test_a_broken_row_in_a_test_file_is_an_error_naming_the_file_and_line_not_a_skip(tmp_path, capsys):
    """The GLUE server scores every test row: a submission without one is wrong, where a train row can go."""
    import shutil

    shutil.copytree(os.path.join(GLUE, "RTE"), tmp_path / "RTE")
    test = tmp_path / "RTE" / "test.tsv"
    lines = test.read_text().splitlines(keepends=True)
    test.write_text("".join([*lines[:3], "99\tonly one sentence\n", *lines[3:]]))
    with pytest.raises(DataError) as raised:
        load_task(get_task("rte"), str(tmp_path))
    assert str(raised.value) == (f"{test}:4: 2 fields where the file has 3; a test set needs every row (the GLUE "
                                 "server scores all of them): repair this row")
    train = tmp_path / "RTE" / "train.tsv"
    lines = train.read_text().splitlines(keepends=True)
    train.write_text("".join([*lines[:3], "99\tonly one sentence\n", *lines[3:]]))
    test.write_text("".join(lines_ for lines_ in test.read_text().splitlines(keepends=True) if not
                            lines_.startswith("99\t")))
    capsys.readouterr()
    assert len(load_task(get_task("rte"), str(tmp_path))["train"]) == len(lines) - 1
    assert f"{train}: skipped 1 rows with a wrong number of fields (lines [4])" in capsys.readouterr().err


def test_qqps_fingerprint_is_the_same_from_the_tsv_and_from_the_hubs_layout(tmp_path):
    """QQP's TSVs number rows by their question-pair ids, the hub's files from 0: the same texts and labels
    are the same data (a teacher's cached outputs serve both)."""
    qqp = get_task("qqp")
    tsv = load_task(qqp, GLUE)
    assert tsv["train"]["idx"][0] != 0
    folder = tmp_path / "qqp"
    folder.mkdir()
    for split, data in tsv.items():
        data.remove_columns("idx").to_json(str(folder / f"{split}.jsonl"))  # rows numbered from 0 on loading
    hub_layout = load_task(qqp, str(tmp_path))
    assert hub_layout["train"]["idx"][0] == 0
    assert {split: fingerprint(data) for split, data in hub_layout.items()} == \
        {split: fingerprint(data) for split, data in tsv.items()}

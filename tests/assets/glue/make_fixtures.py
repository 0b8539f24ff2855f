"""Writes the GLUE-format fixtures in this folder (run once; the output is committed).

Each task's files follow the layout of the original GLUE download (`download_glue_data.py`), quirks included:
CoLA's headerless train/dev, MRPC's `Quality` column, MNLI's parse columns and label1..label5 on dev,
QQP's ids and one truncated row, STS-B's float scores, word labels for QNLI/RTE/MNLI. The text is sentences
of tests/assets/enwiki_sample, some with unbalanced quotes (GLUE's files are read with quoting off).
Labels are drawn at random (seeded): these files test reading, not learning.

    python tests/assets/glue/make_fixtures.py
"""

import os
import random
import re

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE = os.path.join(HERE, "..", "enwiki_sample", "wiki_00")
TRAIN, DEV, TEST = 40, 16, 8


def sentences() -> list[str]:
    text = open(SAMPLE, encoding="utf-8").read()
    text = re.sub(r"<[^>]+>", " ", text)
    found = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if 30 <= len(s.strip()) <= 160]
    found = [" ".join(s.split()) for s in found]  # one line each, no tabs
    # GLUE's text has quotes a quoting reader would choke on: keep some unbalanced
    return [s if i % 7 else f'"{s}' for i, s in enumerate(found[:2000])]


def write(path: str, rows: list[list]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write("\t".join(map(str, row)) + "\n")


def main() -> None:
    rng = random.Random(13)
    pool = sentences()

    def s():
        return rng.choice(pool)

    def parse(text):  # a bracketed parse, as MNLI's *_parse columns
        return "( " + " ".join(f"( {w} )" for w in text.split()[:6]) + " )"

    # CoLA: headerless train/dev (source, label, original label or empty, sentence); test with a header
    for split, n in (("train", TRAIN), ("dev", DEV)):
        rows = []
        for _ in range(n):
            label = rng.randint(0, 1)
            rows.append(["gj04", label, "" if label else "*", s()])
        write(f"{HERE}/CoLA/{split}.tsv", rows)
    write(f"{HERE}/CoLA/test.tsv", [["index", "sentence"]] + [[i, s()] for i in range(TEST)])

    # SST-2
    for split, n in (("train", TRAIN), ("dev", DEV)):
        write(f"{HERE}/SST-2/{split}.tsv", [["sentence", "label"]] + [[s(), rng.randint(0, 1)] for _ in range(n)])
    write(f"{HERE}/SST-2/test.tsv", [["index", "sentence"]] + [[i, s()] for i in range(TEST)])

    # MRPC: Quality #1 ID #2 ID #1 String #2 String; test has index instead of Quality
    header = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    for split, n in (("train", TRAIN), ("dev", DEV)):
        write(f"{HERE}/MRPC/{split}.tsv", [header] + [
            [rng.randint(0, 1), rng.randint(10**5, 10**6), rng.randint(10**5, 10**6), s(), s()] for _ in range(n)])
    write(f"{HERE}/MRPC/test.tsv", [["index"] + header[1:]] + [
        [i, rng.randint(10**5, 10**6), rng.randint(10**5, 10**6), s(), s()] for i in range(TEST)])

    # STS-B: float scores in [0, 5]
    header = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2"]
    for split, n in (("train", TRAIN), ("dev", DEV)):
        write(f"{HERE}/STS-B/{split}.tsv", [header + ["score"]] + [
            [i, "main-news", "2012test", "2012", f"{i:04d}", "none", "none", s(), s(), f"{rng.uniform(0, 5):.3f}"]
            for i in range(n)])
    write(f"{HERE}/STS-B/test.tsv", [header] + [
        [i, "main-news", "2012test", "2012", f"{i:04d}", "none", "none", s(), s()] for i in range(TEST)])

    # QQP: id qid1 qid2 question1 question2 is_duplicate; one truncated row in train, as the release has
    header = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    rows = [header] + [[100 + i, 2 * i, 2 * i + 1, s(), s(), rng.randint(0, 1)] for i in range(TRAIN)]
    rows.insert(7, [999, 5, 6, "A question whose row was cut short"])
    write(f"{HERE}/QQP/train.tsv", rows)
    write(f"{HERE}/QQP/dev.tsv", [header] + [[200 + i, 2 * i, 2 * i + 1, s(), s(), rng.randint(0, 1)]
                                             for i in range(DEV)])
    write(f"{HERE}/QQP/test.tsv", [["id", "question1", "question2"]] + [[i, s(), s()] for i in range(TEST)])

    # MNLI: many columns; train has label1, dev label1..label5; gold_label last
    names = ["entailment", "neutral", "contradiction"]
    base = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
            "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]

    def mnli_row(i, labels):
        a, b = s(), s()
        return [i, 1000 + i, f"{1000 + i}n", rng.choice(["fiction", "government", "slate", "telephone", "travel"]),
                parse(a), parse(b), "(ROOT " + parse(a) + ")", "(ROOT " + parse(b) + ")", a, b, *labels]
    write(f"{HERE}/MNLI/train.tsv", [base + ["label1", "gold_label"]] + [
        mnli_row(i, [label, label]) for i, label in ((i, rng.choice(names)) for i in range(TRAIN))])
    for split in ("dev_matched", "dev_mismatched"):
        rows = [base + [f"label{k}" for k in range(1, 6)] + ["gold_label"]]
        for i in range(DEV):
            gold = rng.choice(names)
            rows.append(mnli_row(i, [gold] + [rng.choice([gold, gold, *names]) for _ in range(4)] + [gold]))
        write(f"{HERE}/MNLI/{split}.tsv", rows)
    for split in ("test_matched", "test_mismatched"):
        write(f"{HERE}/MNLI/{split}.tsv", [base] + [mnli_row(i, []) for i in range(TEST)])
    write(f"{HERE}/diagnostic/diagnostic.tsv", [["index", "sentence1", "sentence2"]] + [
        [i, s(), s()] for i in range(TEST)])

    # QNLI, RTE: word labels; WNLI: 0/1
    for folder, first, second, labels in (("QNLI", "question", "sentence", ["entailment", "not_entailment"]),
                                          ("RTE", "sentence1", "sentence2", ["entailment", "not_entailment"]),
                                          ("WNLI", "sentence1", "sentence2", [0, 1])):
        for split, n in (("train", TRAIN), ("dev", DEV)):
            write(f"{HERE}/{folder}/{split}.tsv", [["index", first, second, "label"]] + [
                [i, s(), s(), rng.choice(labels)] for i in range(n)])
        write(f"{HERE}/{folder}/test.tsv", [["index", first, second]] + [[i, s(), s()] for i in range(TEST)])


if __name__ == "__main__":
    main()

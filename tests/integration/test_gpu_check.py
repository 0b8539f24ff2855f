"""The device check's dry run (`bash bench/gpu_check.sh --dry-run`) on this CPU: every part runs its code on the
tiny preset, the table comes last, the JSON holds every part and row. A GPU session has minutes, not a second
try: what can break without a GPU breaks here."""

import json
import os
import subprocess

import pytest

from tests.conftest import ROOT

PARTS = ("environment", "trainer_check", "steps_eager", "finetune", "trainer_steps", "determinism", "compile_4x128",
         "compile_2x512")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    result = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu_check.sh"), "--dry-run"], cwd=ROOT,
                            capture_output=True, text=True, timeout=400,
                            env={**os.environ, "OUT": str(out), "PYTHONPATH": ROOT})
    with open(out / "gpu_check.json", encoding="utf-8") as handle:
        report = json.load(handle)
    return result, report, out


def test_the_dry_run_passes_and_prints_the_table_last(dry_run):
    result, report, out = dry_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.rstrip().splitlines()
    header = next(index for index, line in enumerate(lines) if line.startswith("part "))
    assert "MFU gemm" in lines[header] and "peak GiB" in lines[header]
    assert len(lines) - header - 1 == len(report["rows"])  # the table is the last thing printed, one line a row
    assert {"pytest_gpu.log", "gpu_check.log", "gpu_check.json"} <= set(os.listdir(out))


def test_the_report_holds_every_part_and_figure(dry_run):
    _, report, _ = dry_run
    assert report["schema"] == 1 and report["dry_run"] is True and report["gpu"] is None
    assert report["torch"] and report["environment"]["gemm_bf16_flops"] > 0
    assert tuple(report["parts"]) == PARTS
    assert {name for name, part in report["parts"].items() if part["status"] == "ok"} == set(PARTS[:6])
    assert all(report["parts"][name]["status"] == "skipped" for name in PARTS[6:])
    assert report["failed"] == 0
    for row in report["rows"]:
        assert {"part", "measurement", "status", "note"} <= set(row) and row["status"] in ("ok", "skipped")
    steps = report["parts"]["steps_eager"]["figures"]["model_steps"]
    for shape in ("4x128", "2x512"):
        for variant in ("ours", "transformers"):
            assert steps[shape][variant]["samples_per_s"] > 0 and steps[shape][variant]["flops_per_step"] > 0
    timed = [row for row in report["rows"] if row.get("samples_per_s")]
    assert {row["part"] for row in timed} == {"steps_eager", "finetune", "trainer_steps", "determinism"}
    reruns = report["parts"]["determinism"]["figures"]["reruns"]
    assert reruns["strict"]["identical"] and reruns["default"]["identical"]  # a CPU: both modes
    assert all(row["mfu_gemm"] > 0 for row in timed if row["part"] != "finetune")
    check = report["parts"]["trainer_check"]["figures"]["trainer_check"]
    assert check["logits_dtypes"] == ["torch.bfloat16"]


def test_what_needs_cuda_says_so(dry_run):
    _, report, _ = dry_run
    statuses = {(row["part"], row["measurement"]): (row["status"], row["note"]) for row in report["rows"]}
    assert statuses[("trainer_check", "host syncs per train_step")][0] == "skipped"
    assert "no CUDA" in statuses[("trainer_check", "host syncs per train_step")][1]
    assert statuses[("pytest", "pytest -m gpu tests/gpu")][0] == "skipped"

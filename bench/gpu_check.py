"""The device check: what the project does on a GPU, in one run of a few minutes on a lent machine.

    python bench/gpu_check.py [--dry-run] [--out PATH] [--budget-s 390] [--parts NAME,...]
        [--pytest-log FILE --pytest-status N]

Usually run through `bash bench/gpu_check.sh`, which installs the carried wheels and runs the GPU-marked tests
first. Parts, in this order (the most telling first, so a budget cut falls on the least):
  environment     GPU, torch, CUDA, package versions; the measured bf16 GEMM rate (the MFU denominator beside
                  the datasheet's dense bf16 peak)
  trainer_check   the real Trainer (DeepSpeed engine, LAMB, precision auto) a few steps on tiny shards of the
                  Wikipedia sample: the MLM logits come out in bf16; every host synchronisation inside
                  `Trainer.train_step` (torch's sync debug mode), of which only the step's one planned read
                  (the `.tolist()` of the all-reduced vector) may occur
  steps_eager     squeezebert-base steps at the paper's micro-batches 128x128 and 32x512 (batch x length): the
                  project's step (bf16 autocast, reference LAMB) against transformers' SqueezeBertForMaskedLM +
                  SOP head with fused AdamW; samples/s, MFU, peak memory
  finetune        bench/bench_finetune.py on an export of squeezebert-base against BERT-base, bf16, CUDA
  trainer_steps   the real Trainer's step at 128x128, squeezebert-base: what a run gets, engine included
  determinism     whether two runs from one seed end bit-identical with `determinism` default and strict, and
                  the strict step's time beside the default's (steps_eager)
  compile_*       the project's step with the encoder layers compiled, one process per shape
See bench/bench_cuda_step.py for what each measures. Each part runs in its own process under its own time
budget: a part that fails or overruns is a FAILED row with its one-line reason (what it measured before is
kept), and the check goes on with the next. The table comes last; every figure goes to the JSON (`--out`,
default $OUT/gpu_check.json, else bench/out/gpu_check.json). Exit status 1 when a row FAILED, else 0.

`--dry-run` (a CPU, about a minute): the same parts on the tiny preset and small shapes, the DeepSpeed engine on gloo,
the timing, the JSON and the table; what needs CUDA says "skipped: no CUDA", compiling says why it is skipped.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from formats.errors import one_line  # noqa: E402
from formats.files import atomic_write_bytes  # noqa: E402

SCHEMA = 1
DEFAULT_BUDGET_S = 390  # gpu_check.sh's 8 minutes less the install and the GPU-marked tests


@dataclass
class Part:
    name: str
    budget_s: float
    tasks: list[tuple[str, dict]] = field(default_factory=list)  # (bench_cuda_step.TASKS name, its arguments)
    skip: str = ""  # why this plan does not run it


def plan(dry_run: bool) -> list[Part]:
    """The parts in order, the same in a dry run with tiny sizes. Budgets are each part's ceiling; the check as a
    whole stops at --budget-s."""
    if dry_run:
        preset, warmup, steps = "squeezebert-tiny", 1, 2
        shapes, trainer_batch, gemm = [(4, 128), (2, 512)], 4, 256
        finetune_args = ["--steps", "1", "--warmup", "1", "--batch", "2", "--infer-batch", "2", "--latency-reps", "1",
                         "--seq-len", "32", "--threads", "2"]
        no_compile = "dry run: inductor builds C++ kernels on a CPU for half a minute or more"
    else:
        preset, warmup, steps = "squeezebert-base", 3, 10
        shapes, trainer_batch, gemm = [(128, 128), (32, 512)], 128, 8192
        finetune_args = ["--steps", "10", "--warmup", "3", "--batch", "32", "--infer-batch", "128",
                         "--latency-reps", "20", "--seq-len", "128", "--threads", "8"]
        no_compile = ""
    timing = {"preset": preset, "warmup": warmup, "steps": steps}
    check_steps, check_batch = (2, 8) if dry_run else (4, 32)
    return [
        Part("environment", 40, [("environment", {"gemm_size": gemm})]),
        Part("trainer_check", 75, [("trainer_check", {"preset": "squeezebert-tiny", "steps": check_steps,
                                                      "global_batch": check_batch, "micro_batch": check_batch // 2})]),
        Part("steps_eager", 90, [("model_steps", {**timing, "shapes": shapes, "variants": ["ours", "transformers"]})]),
        Part("finetune", 90, [("finetune", {"preset": preset, "tiny_bert": dry_run, "bench_args": finetune_args})]),
        Part("trainer_steps", 75, [("trainer_steps", {**timing, "batch": trainer_batch, "seq_len": 128})]),
        Part("determinism", 75, [("reruns", {"preset": preset, "batch": shapes[0][0] // 4, "seq_len": 128, "steps": 3}),
                                 ("model_steps", {**timing, "shapes": shapes, "variants": ["ours_strict"]})]),
        *(Part(f"compile_{batch}x{length}", 100, [("model_steps", {**timing, "shapes": [(batch, length)],
                                                                   "variants": ["ours_compiled"]})], skip=no_compile)
          for batch, length in shapes),
    ]


# ---- inside a part's process ------------------------------------------------------------------------------------

class Context:
    """What a part's tasks share: the device, the rates MFU is computed against, where to work, and the rows and
    figures recorded so far (saved after each row, so a part stopped at its budget keeps what it measured)."""

    def __init__(self, part: str, dry_run: bool, work_dir: str, rates: dict, result_path: str) -> None:
        import torch

        self.part, self.dry_run, self.work_dir, self.result_path = part, dry_run, work_dir, result_path
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.gemm_flops, self.peak_flops = rates.get("gemm_bf16_flops"), rates.get("datasheet_bf16_flops")
        self.rows: list[dict] = []
        self.figures_by_task: dict[str, dict] = {}
        self.figures: dict = {}  # the running task's, inside figures_by_task
        self.errors: list[str] = []

    def row(self, measurement: str, shape: str = "", samples_per_s: float | None = None,
            step_ms: float | None = None, flops_per_s: float | None = None, peak_gib: float | None = None,
            status: str = "ok", note: str = "") -> None:
        rates = {"mfu_gemm": self.gemm_flops, "mfu_datasheet": self.peak_flops}
        self.rows.append({
            "part": self.part, "measurement": measurement, "shape": shape, "samples_per_s": samples_per_s,
            "step_ms": step_ms, "tflops": flops_per_s / 1e12 if flops_per_s else None,
            **{key: flops_per_s / rate if flops_per_s and rate else None for key, rate in rates.items()},
            "peak_gib": peak_gib, "status": status, "note": note,
        })
        self.save()

    def save(self) -> None:
        result = {"rows": self.rows, "figures": self.figures_by_task, "errors": self.errors}
        atomic_write_bytes(self.result_path, json.dumps(result, default=str).encode("utf-8"))


def run_part(args) -> int:
    import bench_cuda_step

    part = next(p for p in plan(args.dry_run) if p.name == args.run_part)
    ctx = Context(part.name, args.dry_run, args.work_dir, json.loads(args.rates), args.part_result)
    ctx.save()
    for task, arguments in part.tasks:
        ctx.figures = ctx.figures_by_task[task] = {}
        try:
            bench_cuda_step.TASKS[task](ctx, **arguments)
        except Exception as error:  # the next task still runs; the reason is the part's row
            import traceback

            traceback.print_exc()
            ctx.errors.append(f"{task}: {one_line(error)}")
            ctx.row(task, status="FAILED", note=one_line(error))
    return 0


# ---- the check: parts in their own processes ---------------------------------------------------------------------

def run_child(part: Part, timeout: float, args, work_dir: str, rates: dict) -> dict:
    """Runs one part in its own process (its own session, so an overrun kills it and its children); its output is
    passed through, and its result file read back, whatever it got to."""
    result_path = os.path.join(work_dir, f"{part.name}.json")
    command = [sys.executable, os.path.abspath(__file__), "--run-part", part.name, "--part-result", result_path,
               "--work-dir", work_dir, "--rates", json.dumps(rates)] + (["--dry-run"] if args.dry_run else [])
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               errors="replace", start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    tail: collections.deque[str] = collections.deque(maxlen=30)

    def relay() -> None:
        for line in process.stdout:
            tail.append(line.rstrip("\n"))
            sys.stdout.write(f"[{part.name}] {line}")
            sys.stdout.flush()

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    reason = ""
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        code = None
        reason = f"stopped at its time budget of {timeout:.0f} s"
    try:  # the part's own session: it, or what it left running (compile workers, loader workers)
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    code = process.wait() if code is None else code
    reader.join(timeout=5)
    try:
        with open(result_path, encoding="utf-8") as handle:
            result = json.load(handle)
    except (OSError, ValueError):
        result = {"rows": [], "figures": {}, "errors": []}
    if not reason and code:
        last = next((line for line in reversed(tail) if line.strip()), "no output")
        reason = f"exit status {code}: {one_line(last)}"
    result.update(seconds=time.monotonic() - started, status="FAILED" if reason or result["errors"] else "ok",
                  reason=reason or "; ".join(result["errors"]))
    if reason:
        result["rows"].append({"part": part.name, "measurement": "(the part)", "status": "FAILED", "note": reason})
    return result


def pytest_row(log: str, status: int) -> dict:
    """The GPU-marked tests' outcome (gpu_check.sh runs them first) as a row: pytest's last summary line."""
    summary = "no log"
    if log and os.path.isfile(log):
        with open(log, encoding="utf-8", errors="replace") as handle:
            lines = [line.strip().strip("=").strip() for line in handle if line.strip()]
        summary = lines[-1] if lines else "empty log"
    ok = status in (0, 5)  # 5: nothing collected, e.g. every test deselected
    skipped = ok and "skipped" in summary and "passed" not in summary
    return {"part": "pytest", "measurement": "pytest -m gpu tests/gpu", "status": "skipped" if skipped else
            ("ok" if ok else "FAILED"), "note": f"{summary} (exit {status})"}


COLUMNS = (  # header, width, row key, format
    ("part", 15, "part", "{}"), ("measurement", 34, "measurement", "{}"), ("batch x len", 11, "shape", "{}"),
    ("samples/s", 10, "samples_per_s", "{:,.1f}"), ("step ms", 8, "step_ms", "{:.2f}"),
    ("TFLOP/s", 8, "tflops", "{:.1f}"), ("MFU gemm", 8, "mfu_gemm", "{:.1%}"),
    ("MFU peak", 8, "mfu_datasheet", "{:.1%}"), ("peak GiB", 8, "peak_gib", "{:.2f}"),
)


def table(rows: list[dict]) -> str:
    def cell(row, key, form):
        value = row.get(key)
        return "-" if value is None or value == "" else form.format(value)

    lines = ["  ".join(f"{header:<{width}}" for header, width, _, _ in COLUMNS) + "  status"]
    for row in rows:
        cells = [f"{cell(row, key, form):<{width}}" for _, width, key, form in COLUMNS]
        lines.append("  ".join(cells) + f"  {row['status']}" + (f": {row['note']}" if row.get("note") else ""))
    return "\n".join(lines)


def check(args) -> int:
    parts = plan(args.dry_run)
    if args.parts:
        wanted = set(args.parts.split(","))
        unknown = wanted - {part.name for part in parts}
        if unknown:
            sys.exit(f"gpu_check: error: --parts: unknown {sorted(unknown)}; this plan has "
                     f"{[part.name for part in parts]}")
        parts = [part for part in parts if part.name in wanted or part.name == "environment"]
    started = time.monotonic()
    work_dir = tempfile.mkdtemp(prefix="gpu_check_")  # shards, checkpoints, exports: removed at the end
    report = {"schema": SCHEMA, "dry_run": args.dry_run, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ",
              time.gmtime()), "budget_s": args.budget_s, "gpu": None, "torch": None, "cuda": None,
              "environment": {}, "parts": {}, "rows": []}
    if args.pytest_log or args.pytest_status is not None:
        report["rows"].append(pytest_row(args.pytest_log, args.pytest_status or 0))
    try:
        run_parts(parts, args, report, work_dir, started)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    compare_with_eager(report["rows"])
    report["failed"] = sum(row["status"] == "FAILED" for row in report["rows"])
    write_report(report, args.out, started)
    print(f"\ngpu_check: {'dry run, ' if args.dry_run else ''}{report['gpu'] or 'no GPU'}, torch {report['torch']}, "
          f"CUDA {report['cuda']}; {time.monotonic() - started:.0f} s; figures in {args.out}")
    print(table(report["rows"]))
    return 1 if report["failed"] else 0


def run_parts(parts: list[Part], args, report: dict, work_dir: str, started: float) -> None:
    """Each part in its own process, in order, within the check's budget; the report is rewritten after each."""
    deadline = started + args.budget_s
    rates: dict = {}
    for part in parts:
        remaining = deadline - time.monotonic()
        if part.skip or remaining < 15:
            reason = part.skip or f"out of time: {max(remaining, 0):.0f} s of the {args.budget_s:.0f} s budget left"
            report["parts"][part.name] = {"status": "skipped", "reason": reason}
            report["rows"].append({"part": part.name, "measurement": "(the part)", "status": "skipped",
                                   "note": reason})
            continue
        print(f"gpu_check: {part.name} (budget {min(part.budget_s, remaining):.0f} s)", flush=True)
        result = run_child(part, min(part.budget_s, remaining), args, work_dir, rates)
        report["parts"][part.name] = result
        report["rows"].extend(result.pop("rows"))
        if part.name == "environment":
            environment = result["figures"].get("environment", {})
            report["environment"] = environment
            report.update(gpu=environment.get("gpu"), torch=environment.get("torch"), cuda=environment.get("cuda"))
            rates = {key: environment.get(key) for key in ("gemm_bf16_flops", "datasheet_bf16_flops")}
        write_report(report, args.out, started)


def compare_with_eager(rows: list[dict]) -> None:
    """The compiled step's speed-up over the eager one of the same shape (measured by another part)."""
    eager = {row["shape"]: row["samples_per_s"] for row in rows
             if row["measurement"] == "step ours" and row.get("samples_per_s")}
    for row in rows:
        if row["measurement"] == "step ours, compiled" and row.get("samples_per_s") and eager.get(row["shape"]):
            row["note"] += f"; {row['samples_per_s'] / eager[row['shape']]:.2f}x eager"


def write_report(report: dict, path: str, started: float) -> None:
    report["elapsed_s"] = time.monotonic() - started
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_bytes(path, (json.dumps(report, indent=1, default=str) + "\n").encode("utf-8"))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python bench/gpu_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="a CPU: tiny preset, small shapes, a few seconds")
    default_out = os.path.join(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") else \
        os.path.join(ROOT, "bench", "out", "gpu_check.json")
    parser.add_argument("--out", default=default_out, help=f"the JSON report (default {default_out})")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help="wall time for all parts together; parts that would start later are skipped")
    parser.add_argument("--parts", help="comma-separated part names to run (environment always runs)")
    parser.add_argument("--pytest-log", help="the GPU-marked tests' log, summarised as the table's first row")
    parser.add_argument("--pytest-status", type=int, help="their exit status")
    for internal in ("--run-part", "--part-result", "--work-dir", "--rates"):  # a part's own process
        parser.add_argument(internal, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.run_part:
        return run_part(args)
    return check(args)


if __name__ == "__main__":
    sys.exit(main())

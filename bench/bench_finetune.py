"""Finetuning and inference throughput of SqueezeBERT-base against BERT-base, side by side.

    python bench/bench_finetune.py [--model DIR] [--bert DIR] [--models squeezebert,bert,ours] [--steps 5]
        [--warmup 1] [--batch 16] [--infer-batch 32] [--seq-len 128] [--latency-reps 10] [--threads 2]
        [--device cpu] [--bf16] [--no-padding] [--json OUT]

Three sequence classifiers with 3 labels (MNLI-like), all run by default (`--models` picks some):
- "SqueezeBERT": transformers' `SqueezeBertForSequenceClassification` (by default randomly initialized from the
  `squeezebert-base` preset, or `--model DIR`, an export of `python -m pretrain export` or any transformers
  SqueezeBERT folder);
- "BERT": transformers' `BertForSequenceClassification` (`BertConfig()` defaults, i.e. BERT-base, randomly
  initialized, or `--bert DIR`);
- "SqueezeBERT (ours)": what `finetune` runs for SqueezeBERT folders (`--implementation auto`):
  `finetune.classifier.SqueezeBertClassifier`, transformers' head (pooler, dropout, linear, the same losses) on the
  project's encoder (`pretrain.model`: grouped pointwise layers as batched GEMMs, channels last, q/k/v in one
  GEMM). It holds exactly transformers' SqueezeBERT's weights, classifier included: transformers' model saved to a
  temporary folder and read back with `SqueezeBertClassifier.from_pretrained`. At startup, in eval mode, both give
  the same pooled output on one batch (checked, max abs difference printed; more than 1e-4 is an error).
Random weights run exactly as fast as trained ones: the throughput depends on the shapes only.

Inputs: sentence pairs (consecutive sentences of a paragraph, premise/hypothesis-like) of the Wikipedia sample
in tests/assets/enwiki_sample, tokenized as `[CLS] A [SEP] B [SEP]` with the model folder's vocabulary (or a
WordPiece vocabulary trained on the sample) and padded to `--seq-len`, as GLUE finetuning at max length 128 runs
by default (transformers' `run_glue.py` pads to the max length). Transformers' models cost the same whatever
the real lengths are; the project's encoder skips the padding in attention on CPU (`AttentionByExample`), not in
its GEMMs. `--no-padding`: pairs of consecutive paragraphs truncated to `--seq-len` instead, (almost) every
position real, so the ratio is the models' own without padding to skip. Both models get the same batches.

Measured, each with the models alternating within every repetition (which one goes first rotates from one
repetition to the next), so the noise of a shared machine hits all alike; medians are reported:
1. finetuning step: forward with labels + backward + AdamW step (fused: transformers' Trainer default with
   torch >= 2.8), dropout on, `--batch` samples (16: the SqueezeBERT model card's finetuning batch);
2. inference: forward under `torch.inference_mode`, eval mode, `--infer-batch` samples;
3. latency: one sample (batch 1, padded to `--seq-len`), eval mode, the paper's mobile-phone measure.
FLOPs per sample: the project's matmul formula (`pretrain.model.step_flops`) at the padded length, for each model.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SELF = resource.RUSAGE_SELF
sys.path.insert(0, ROOT)

from data_prep.sentences import split_sentences  # noqa: E402
from data_prep.tokenizer import import_vocab, train_vocab  # noqa: E402
from finetune.classifier import SqueezeBertClassifier  # noqa: E402
from formats.errors import OneLineArgumentParser, UserError, one_line  # noqa: E402
from formats.files import atomic_write_bytes  # noqa: E402
from formats.host_memory import keep_freed_memory  # noqa: E402
from pretrain.model import ModelConfig, step_flops  # noqa: E402
from pretrain.model_files import transformers_config  # noqa: E402

CORPUS = os.path.join(ROOT, "tests", "assets", "enwiki_sample")
NUM_LABELS = 3  # MNLI: entailment, neutral, contradiction
GROUP_KEYS = ("q_groups", "k_groups", "v_groups", "post_attention_groups", "intermediate_groups", "output_groups")
LEARNING_RATE = 3e-5  # the SqueezeBERT model card's run_glue example (batch 16); the step costs the same at any rate
SQUEEZEBERT, BERT, OURS = "SqueezeBERT", "BERT", "SqueezeBERT (ours)"
MODEL_FLAGS = {"squeezebert": SQUEEZEBERT, "bert": BERT, "ours": OURS}  # --models names -> result names
PARITY_TOLERANCE = 1e-4  # max abs difference of the pooled outputs, fp32, eval mode


class BenchError(UserError):
    """A model folder or corpus that cannot be used; the message names the flag."""


@dataclass
class Batch:
    input_ids: torch.Tensor  # [N, W]
    token_type_ids: torch.Tensor  # [N, W]
    attention_mask: torch.Tensor  # [N, W]
    labels: torch.Tensor  # [N]

    def to(self, device: torch.device) -> "Batch":
        return Batch(*(tensor.to(device) for tensor in vars(self).values()))

    def inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "token_type_ids": self.token_type_ids,
                "attention_mask": self.attention_mask}


# ---- inputs -------------------------------------------------------------------------------------------------

def corpus_paragraphs(corpus_dir: str) -> list[list[str]]:
    """Paragraphs (lists of sentences) of WikiExtractor files: `<doc>` tags and one-line titles dropped."""
    paragraphs = []
    for name in sorted(os.listdir(corpus_dir)):
        with open(os.path.join(corpus_dir, name), encoding="utf-8") as handle:
            for line in handle:
                line = line.strip()
                if line.startswith(("<doc", "</doc")) or len(line.split()) < 8:
                    continue
                paragraphs.append(split_sentences([line], presplit=False))
    return paragraphs


def sentence_pairs(paragraphs: list[list[str]]) -> list[tuple[str, str]]:
    return [(p[i], p[i + 1]) for p in paragraphs for i in range(len(p) - 1)]


def paragraph_pairs(paragraphs: list[list[str]]) -> list[tuple[str, str]]:
    """Consecutive paragraphs as pairs (`--no-padding`): long enough that truncation to --seq-len leaves
    (almost) no padding."""
    return [(" ".join(a), " ".join(b)) for a, b in zip(paragraphs, paragraphs[1:])]


def load_tokenizer(model_dir: str | None, paragraphs: list[list[str]]):
    """The model folder's vocabulary when it has one; otherwise a WordPiece vocabulary trained on the corpus."""
    if model_dir and os.path.isfile(os.path.join(model_dir, "vocab.txt")):
        return import_vocab(os.path.join(model_dir, "vocab.txt"), lowercase=True), f"{model_dir}/vocab.txt"
    texts = (" ".join(paragraph) for paragraph in paragraphs)
    tokenizer = train_vocab(texts, vocab_size=30528, lowercase=True)
    return tokenizer, f"WordPiece trained on {os.path.relpath(CORPUS, ROOT)} ({tokenizer.get_vocab_size()} pieces)"


def make_batches(tokenizer, pairs, count: int, batch_size: int, seq_len: int, max_id: int, seed: int):
    """`count` batches of distinct pairs drawn at random (cycling if the corpus runs out), padded to `seq_len`;
    also the mean real length (tokens before padding)."""
    tokenizer.enable_truncation(seq_len, strategy="longest_first")
    tokenizer.enable_padding(length=seq_len, pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    generator = torch.Generator().manual_seed(seed)
    batches, real_lengths = [], []
    for index in range(count):
        chosen = [pairs[order[(index * batch_size + k) % len(order)]] for k in range(batch_size)]
        encodings = tokenizer.encode_batch(chosen)
        input_ids = torch.tensor([e.ids for e in encodings])
        if int(input_ids.max()) >= max_id:
            raise BenchError(f"the vocabulary has ids up to {int(input_ids.max())}, more than a model's "
                             f"vocab_size {max_id}; pass a --model folder whose vocab.txt fits both models")
        attention_mask = torch.tensor([e.attention_mask for e in encodings])
        real_lengths += attention_mask.sum(dim=1).tolist()
        batches.append(Batch(input_ids, torch.tensor([e.type_ids for e in encodings]), attention_mask,
                             torch.randint(0, NUM_LABELS, (batch_size,), generator=generator)))
    return batches, statistics.mean(real_lengths)


# ---- models -------------------------------------------------------------------------------------------------

def load_classifier(model_class, folder: str, flag: str):
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise BenchError(f"{flag} {folder}: no config.json; not a transformers model folder")
    try:
        model, info = model_class.from_pretrained(folder, num_labels=NUM_LABELS, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as error:
        raise BenchError(f"{flag} {folder}: cannot be loaded as {model_class.__name__} ({one_line(error)})") from None
    fresh = [key for key in info["missing_keys"] if not key.startswith("classifier.")]
    if fresh:
        raise BenchError(f"{flag} {folder}: encoder weights missing: {sorted(fresh)[:5]}")
    return model


def build_squeezebert(model_dir: str | None):
    from transformers import SqueezeBertConfig, SqueezeBertForSequenceClassification

    if model_dir:
        return load_classifier(SqueezeBertForSequenceClassification, model_dir, "--model")
    values = {k: v for k, v in transformers_config(ModelConfig.preset("squeezebert-base")).items()
              if k != "architectures"}
    torch.manual_seed(0)
    return SqueezeBertForSequenceClassification(SqueezeBertConfig(**values, num_labels=NUM_LABELS))


def build_bert(bert_dir: str | None):
    from transformers import BertConfig, BertForSequenceClassification

    if bert_dir:
        return load_classifier(BertForSequenceClassification, bert_dir, "--bert")
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(num_labels=NUM_LABELS))


def build_ours(reference) -> SqueezeBertClassifier:
    """What `finetune` runs for SqueezeBERT folders, with `reference`'s weights (transformers' SqueezeBERT
    classifier, classifier layer included): `reference` saved to a temporary folder and read back by
    `SqueezeBertClassifier.from_pretrained`, the path `finetune` loads a folder by."""
    with tempfile.TemporaryDirectory(prefix="bench_finetune_") as folder:
        reference.save_pretrained(folder)
        ours, info = SqueezeBertClassifier.from_pretrained(folder, output_loading_info=True)
    left = sorted(info["missing_keys"]) + sorted(info["unexpected_keys"])
    if left:
        raise BenchError(f"SqueezeBertClassifier does not read transformers' keys {left[:5]}")
    return ours


def check_parity(ours: SqueezeBertClassifier, reference, batch: Batch) -> dict:
    """Max abs difference of the pooled outputs (and of the logits) of ours and transformers' SqueezeBERT, eval
    mode, fp32, on `batch`; a BenchError above PARITY_TOLERANCE (the two would not be the same model)."""
    ours.eval()
    reference.eval()
    with torch.inference_mode():
        pooled_ours = ours.transformer(**batch.inputs()).pooler_output
        pooled_reference = reference.transformer(**batch.inputs()).pooler_output
        logits_ours = ours(**batch.inputs()).logits
        logits_reference = reference(**batch.inputs()).logits
    check = {"batch": int(batch.input_ids.shape[0]), "tolerance": PARITY_TOLERANCE,
             "pooled_max_abs_diff": float((pooled_ours - pooled_reference).abs().max()),
             "logits_max_abs_diff": float((logits_ours - logits_reference).abs().max())}
    if not check["pooled_max_abs_diff"] <= PARITY_TOLERANCE:
        raise BenchError(f"ours and transformers' SqueezeBERT differ: pooled outputs up to "
                         f"{check['pooled_max_abs_diff']:.3g} apart with the same weights (tolerance "
                         f"{PARITY_TOLERANCE:g})")
    return check


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops_per_sample(config, seq_len: int) -> float:
    """Matmul FLOPs of one forward of one sample padded to `seq_len` (padding is computed like any token):
    `pretrain.model.step_flops`, the formula tested against `FlopCounterMode` for SqueezeBERT; BERT is the same
    formula with every group count 1 (dense layers). Its 2-label SOP head stands in for the 3-label classifier
    (1.5 kFLOP apart). Not `FlopCounterMode` here: it misses BERT's attention (SDPA's CPU kernel is not in its
    table), and in backward it would overcount SqueezeBERT's grouped convolutions (its weight-gradient formula
    ignores groups). Training is 3 × forward."""
    shape = ModelConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
        **{key: getattr(config, key, 1) for key in GROUP_KEYS},
    )
    return step_flops(shape, seq_len, seq_len**2, 1, 0, training=False)


# ---- timing -------------------------------------------------------------------------------------------------

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def train_step(model, optimizer, batch: Batch, device: torch.device, bf16: bool) -> None:
    optimizer.zero_grad(set_to_none=True)
    with autocast(device, bf16):
        loss = model(**batch.inputs(), labels=batch.labels).loss
    loss.backward()
    optimizer.step()


def infer(model, batch: Batch, device: torch.device, bf16: bool) -> None:
    with torch.inference_mode(), autocast(device, bf16):
        model(**batch.inputs())


def alternate(calls: dict[str, Callable[[int], None]], warmup: int, repetitions: int,
              device: torch.device) -> dict[str, list[tuple[float, float]]]:
    """(wall seconds, process CPU seconds, minor page faults, system seconds) per call of each callable (given
    the repetition index), the callables alternating; the one that goes first rotates (repetition r starts with
    the callable r mod count; with two, they swap), so none always runs first, right after the others'
    allocations. The CPU time is what a busy machine distorts least when `--threads 1`: a descheduled process
    accrues none (with more threads it also counts the threads spinning at OpenMP barriers). Page faults and
    system time: the kernel's share, mostly handing back freed memory page by page (`formats.host_memory`)."""
    names = list(calls)
    times: dict[str, list[tuple[float, float, int, float]]] = {name: [] for name in names}
    for repetition in range(warmup + repetitions):
        shift = repetition % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            start, start_cpu, start_usage = time.perf_counter(), time.process_time(), resource.getrusage(SELF)
            calls[name](repetition)
            synchronize(device)
            if repetition >= warmup:
                usage = resource.getrusage(SELF)
                times[name].append((time.perf_counter() - start, time.process_time() - start_cpu,
                                    usage.ru_minflt - start_usage.ru_minflt, usage.ru_stime - start_usage.ru_stime))
    return times


def adamw(model, device: torch.device):
    # Fused AdamW: transformers' Trainer default (`adamw_torch_fused`) with torch >= 2.8, on CPU and CUDA.
    return torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01, fused=True)


def time_finetuning(models: dict, batches: list[Batch], args, device: torch.device) -> dict[str, list[float]]:
    """Finetuning steps, alternating; the optimizers (and their 2 × parameters of AdamW moments) die here."""
    for model in models.values():
        model.to(device).train()
    optimizers = {name: adamw(model, device) for name, model in models.items()}
    times = alternate(
        {name: (lambda i, n=name: train_step(models[n], optimizers[n], batches[i], device, args.bf16))
         for name in models}, args.warmup, args.steps, device)
    for model in models.values():
        model.zero_grad(set_to_none=True)
    return times


def time_inference(models: dict, batches: list[Batch], repetitions: int, args,
                   device: torch.device) -> dict[str, list[float]]:
    for model in models.values():
        model.to(device).eval()
    return alternate({name: (lambda i, n=name: infer(models[n], batches[i], device, args.bf16)) for name in models},
                     args.warmup, repetitions, device)


# ---- report -------------------------------------------------------------------------------------------------

def summary(times: list[tuple[float, float, int, float]], samples: int) -> dict:
    wall, cpu = [t[0] for t in times], [t[1] for t in times]
    median = statistics.median(wall)
    return {"median_s": median, "min_s": min(wall), "max_s": max(wall), "samples_per_s": samples / median,
            "median_cpu_s": statistics.median(cpu), "samples_per_cpu_s": samples / statistics.median(cpu),
            "median_minor_faults": statistics.median(t[2] for t in times),
            "median_system_s": statistics.median(t[3] for t in times), "times_s": wall, "cpu_times_s": cpu}


RATIO_ROWS = {  # JSON key -> (table label, explanation)
    "ratios": ("ratio S/B", "transformers' SqueezeBERT / BERT"),
    "ratios_ours_bert": ("ratio ours/B", "ours / BERT"),
    "ratios_ours_squeezebert": ("ratio ours/S", "ours / transformers' SqueezeBERT"),
}


def print_table(results: dict, names: list[str]) -> None:
    header = (f"{'model':<18} {'params':>8} {'fwd GFLOP/sample':>16} {'train samples/s':>15} "
              f"{'inference samples/s':>19} {'latency ms (batch 1)':>20}")
    print(header)
    for name in names:
        result = results["models"][name]
        latency = result.get("latency")
        print(f"{name:<18} {result['parameters'] / 1e6:>7.1f}M {result['forward_flops_per_sample'] / 1e9:>16.1f} "
              f"{result['train']['samples_per_s']:>15.2f} {result['inference']['samples_per_s']:>19.2f} "
              f"{latency['median_s'] * 1e3 if latency else float('nan'):>20.1f}")
    printed = []
    for key, (label, explanation) in RATIO_ROWS.items():
        ratios = results.get(key)
        if ratios is None:
            continue
        printed.append(explanation)
        print(f"{label:<18} {ratios['parameters']:>8.2f} {ratios['forward_flops']:>16.2f} "
              f"{ratios['train_samples_per_s']:>15.2f} {ratios['inference_samples_per_s']:>19.2f} "
              f"{ratios.get('latency', float('nan')):>20.2f}")
    for measure in ("train", "inference"):
        print(f"{measure}: minor page faults (system seconds) per call, median: " + ", ".join(
            f"{name} {results['models'][name][measure]['median_minor_faults']:,.0f} "
            f"({results['models'][name][measure]['median_system_s']:.3f} s)" for name in names))
    if printed:
        print(f"(ratio rows, X / Y for {'; '.join(printed)}: params, FLOPs and samples/s X / Y; latency Y's time / "
              "X's, so > 1 means X is faster everywhere but params and FLOPs)")


def ratios_between(fast: dict, slow: dict) -> tuple[dict, dict]:
    """`fast` against `slow` (two entries of results["models"]): wall-time ratios (samples/s, and batch-1
    latency as slow's time over fast's, so > 1 means `fast` is faster) and the same per CPU second."""
    ratios = {
        "parameters": fast["parameters"] / slow["parameters"],
        "forward_flops": fast["forward_flops_per_sample"] / slow["forward_flops_per_sample"],
        "train_samples_per_s": fast["train"]["samples_per_s"] / slow["train"]["samples_per_s"],
        "inference_samples_per_s": fast["inference"]["samples_per_s"] / slow["inference"]["samples_per_s"],
    }
    if "latency" in fast:
        ratios["latency"] = slow["latency"]["median_s"] / fast["latency"]["median_s"]
    cpu = {measure: fast[measure]["samples_per_cpu_s"] / slow[measure]["samples_per_cpu_s"]
           for measure in ("train", "inference", "latency") if measure in fast}
    return ratios, cpu


def run(args) -> dict:
    device = torch.device(args.device)
    selected = [MODEL_FLAGS[flag] for flag in args.models]
    built: dict = {}
    if SQUEEZEBERT in selected or OURS in selected:  # ours takes transformers' SqueezeBERT's weights
        built[SQUEEZEBERT] = build_squeezebert(args.model)
    if BERT in selected:
        built[BERT] = build_bert(args.bert)
    if OURS in selected:
        built[OURS] = build_ours(built[SQUEEZEBERT])
    models = {name: built[name] for name in selected}
    paragraphs = corpus_paragraphs(CORPUS)
    pairs = paragraph_pairs(paragraphs) if args.no_padding else sentence_pairs(paragraphs)
    tokenizer, vocab_source = load_tokenizer(args.model, paragraphs)
    names = list(models)
    max_id = min(model.config.vocab_size for model in built.values())
    train_batches, real_length = make_batches(tokenizer, pairs, args.warmup + args.steps, args.batch,
                                              args.seq_len, max_id, seed=0)
    infer_batches, _ = make_batches(tokenizer, pairs, args.warmup + args.steps, args.infer_batch,
                                    args.seq_len, max_id, seed=1)
    latency_batches = []  # none with --latency-reps 0 (and --warmup 0: no batch to draw at all)
    if args.latency_reps:
        latency_batches, _ = make_batches(tokenizer, pairs, args.warmup + args.latency_reps, 1, args.seq_len,
                                          max_id, seed=2)
    results: dict = {
        "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(), "bf16": args.bf16,
        "seq_len": args.seq_len, "batch": args.batch, "infer_batch": args.infer_batch, "steps": args.steps,
        "warmup": args.warmup, "latency_reps": args.latency_reps, "vocabulary": vocab_source,
        "mean_real_tokens": real_length, "load_average_at_start": os.getloadavg()[0], "models": {},
        "keeps_freed_memory": args.kept_freed_memory,
        "inputs": "paragraph pairs truncated (--no-padding)" if args.no_padding else "sentence pairs",
    }
    for name, model in models.items():
        attention = getattr(model.config, "_attn_implementation", None) or "eager"
        if name == OURS:
            attention = "sdpa (training on CPU: matmul, softmax and the project's dropout sampler)"
        results["models"][name] = {
            "class": type(model).__name__, "parameters": parameter_count(model), "attention": attention,
            "forward_flops_per_sample": forward_flops_per_sample(model.config, args.seq_len),
        }
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
          f"{'bf16 autocast' if args.bf16 else 'fp32'}; inputs: {results['inputs']} of the Wikipedia sample, "
          f"mean {real_length:.1f} real tokens, padded to {args.seq_len}; vocabulary: {vocab_source}; "
          f"malloc {'keeps freed memory (as finetune)' if args.kept_freed_memory else 'as glibc sets it'}; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    if OURS in built:
        # Before any timing, on CPU, fp32: the first inference batch (the same for both).
        results["parity"] = check_parity(built[OURS], built[SQUEEZEBERT], infer_batches[0])
        print(f"parity, eval mode, fp32, {results['parity']['batch']} samples: ours against transformers' "
              f"SqueezeBERT with the same weights: pooled output max abs difference "
              f"{results['parity']['pooled_max_abs_diff']:.2e} (tolerance {PARITY_TOLERANCE:g}), logits "
              f"{results['parity']['logits_max_abs_diff']:.2e}", flush=True)
        if SQUEEZEBERT not in models:
            del built[SQUEEZEBERT]  # only the weight source and the parity reference: not timed

    train_times = time_finetuning(models, [batch.to(device) for batch in train_batches], args, device)
    for name in names:
        results["models"][name]["train"] = summary(train_times[name], args.batch)
    print(f"finetuning steps done ({args.steps} per model)", flush=True)
    infer_times = time_inference(models, [batch.to(device) for batch in infer_batches], args.steps, args, device)
    for name in names:
        results["models"][name]["inference"] = summary(infer_times[name], args.infer_batch)
    if args.latency_reps:
        latency_times = time_inference(models, [batch.to(device) for batch in latency_batches], args.latency_reps,
                                       args, device)
        for name in names:
            results["models"][name]["latency"] = summary(latency_times[name], 1)

    results["load_average_at_end"] = os.getloadavg()[0]
    # Latency ratios are speed-ups too (the other's time over this one's), so that > 1 means faster.
    # "ratios" / "ratios_cpu_time": transformers' SqueezeBERT / BERT, as before ours was added.
    pairs_of_models = {"": (SQUEEZEBERT, BERT), "_ours_bert": (OURS, BERT), "_ours_squeezebert": (OURS, SQUEEZEBERT)}
    for suffix, (fast, slow) in pairs_of_models.items():
        if fast in models and slow in models:
            results[f"ratios{suffix}"], results[f"ratios{suffix}_cpu_time"] = ratios_between(
                results["models"][fast], results["models"][slow])
    return results


def parse_args(argv=None):
    parser = OneLineArgumentParser(prog="python bench/bench_finetune.py", name="bench_finetune",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="transformers-format SqueezeBERT folder (default: random squeezebert-base)")
    parser.add_argument("--bert", help="transformers-format BERT folder (default: random BertConfig())")
    parser.add_argument("--models", default="squeezebert,bert,ours",
                        help="comma-separated, of squeezebert (transformers'), bert, ours (the project's encoder); "
                             "timed in this order, which rotates; default all three")
    parser.add_argument("--steps", type=int, default=5, help="timed repetitions per model and measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions per model first")
    parser.add_argument("--batch", type=int, default=16, help="finetuning batch (the model card's 16)")
    parser.add_argument("--infer-batch", type=int, default=32, help="inference batch")
    parser.add_argument("--latency-reps", type=int, default=10, help="timed batch-1 forwards per model; 0: skip")
    parser.add_argument("--seq-len", type=int, default=128, help="every sample is padded to this length")
    parser.add_argument("--no-padding", action="store_true",
                        help="pairs of consecutive paragraphs truncated to --seq-len instead of sentence pairs "
                             "padded to it: (almost) every position real, so no model can gain by skipping padding")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for both models")
    parser.add_argument("--json", help="also write every figure and per-repetition time to this file")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc as it is (by default the process keeps freed memory, as "
                             "`finetune` does: formats.host_memory)")
    args = parser.parse_args(argv)
    args.models = [flag.strip().lower() for flag in args.models.split(",") if flag.strip()]
    unknown = [flag for flag in args.models if flag not in MODEL_FLAGS]
    if unknown or not args.models or len(set(args.models)) != len(args.models):
        parser.error(f"--models: give distinct names of {', '.join(MODEL_FLAGS)}, comma-separated "
                     f"({'unknown: ' + ', '.join(unknown) if unknown else 'none or repeated'})")
    for flag in ("steps", "batch", "infer_batch", "seq_len", "threads"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, not {getattr(args, flag)}")
    if args.warmup < 0 or args.latency_reps < 0:
        parser.error("--warmup and --latency-reps must be 0 or more")
    if not 8 <= args.seq_len <= 512:
        parser.error(f"--seq-len {args.seq_len}: both models have 512 positions; give 8 to 512")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here; use --device cpu")
    return parser, args


def main(argv=None) -> None:
    parser, args = parse_args(argv)
    args.kept_freed_memory = False if args.default_malloc else keep_freed_memory()  # what `finetune` runs with
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # "newly initialized classifier" is expected here
    transformers_logging.disable_progress_bar()  # save_pretrained's, for ours's weights
    try:
        results = run(args)
    except UserError as error:
        parser.exit(2, f"bench_finetune: error: {one_line(error)}\n")
    print(f"load average at the end: {results['load_average_at_end']:.2f} (the machine is shared)")
    print_table(results, list(results["models"]))
    speed_ups = {"ratios": "SqueezeBERT / BERT-base (> 1: SqueezeBERT faster)",
                 "ratios_ours_bert": "SqueezeBERT (ours) / BERT-base (> 1: ours faster)",
                 "ratios_ours_squeezebert": "SqueezeBERT (ours) / transformers' SqueezeBERT (> 1: ours faster)"}
    for key, label in speed_ups.items():
        if key not in results:
            continue
        ratios, cpu = results[key], results[f"{key}_cpu_time"]
        print(f"{label}: finetuning {ratios['train_samples_per_s']:.2f}x, "
              f"inference {ratios['inference_samples_per_s']:.2f}x"
              + (f", batch-1 latency {ratios['latency']:.2f}x" if "latency" in ratios else ""))
        print("  the same per process CPU second (steadier on a busy machine with --threads 1): "
              + ", ".join(f"{measure} {ratio:.2f}x" for measure, ratio in cpu.items()))
    flops = (results.get("ratios_ours_bert") or results.get("ratios") or {}).get("forward_flops")
    if flops:
        print(f"the limit, BERT-base's matmul FLOPs over SqueezeBERT's per sample: {1 / flops:.2f}x (a speed-up "
              "beyond it would need kernels faster per FLOP than BERT's dense GEMMs)")
    if args.json:
        atomic_write_bytes(args.json, (json.dumps(results, indent=2) + "\n").encode("utf-8"))


if __name__ == "__main__":
    main()

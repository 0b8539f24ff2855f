"""Training data: memory-mapped shard sets, the epoch order, dynamic masking, and the loader.

Contract (docs/design.md, "Sample index → example and masks"): the example behind global sample index `g`
and its masks are functions of (seed, epoch, g) alone, so a step's data does not depend on the world size,
the micro-batch, the loader workers or restarts (resume = set `consumed_samples`). The masking rules (BERT's
`create_masked_lm_predictions`, whole-word masking as Google's whole-word BERT): README, "Masking".

The random numbers come from a counter-based generator: a SplitMix64 hash of (seed, epoch, g, position,
stream). numpy's Generators are not used here because building one per sample (the only way to make draws a
function of the sample index) costs more than the rest of the loader, while the hash is one vectorized pass
over the whole micro-batch.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from formats.errors import FormatError, UserError
from formats.files import file_sha256
from formats.layout import vocab_beside
from formats.manifest import MANIFEST_FILE, check_for_training, load_manifest
from formats.shards import open_shard
from formats.vocabulary import VOCAB_FILE

from .config import MaskingConfig
from .pretraining_model import IGNORE_INDEX

PAD_TO_MULTIPLE = 8  # micro-batches are padded to their longest example, rounded up for matmul tiles


class DataError(UserError):
    """Shards that cannot be used for training; the message names the folder or file."""


class ShardSet:
    """All shards of one `seqN/` folder, memory-mapped; `example(i)` is O(log #record batches)."""

    def __init__(self, folder: str) -> None:
        self.manifest = load_manifest(folder)  # a FormatError names the folder and what is wrong
        self.folder = folder
        tables = []
        for shard in self.manifest["shards"]:
            try:
                tables.append(open_shard(os.path.join(folder, shard["file"])))
            except FormatError as error:
                raise FormatError(f"{error}; run `python -m data_prep verify {folder}`") from None
        # the vocabulary beside, the counts, every shard's rows and tokens (cheap: no shard is read whole)
        check_for_training(folder, self.manifest, tables)
        self.seq_len: int = self.manifest["seq_len"]
        self.vocab_size: int = self.manifest["tokenizer"]["vocab_size"]
        self.special_ids: dict[str, int] = self.manifest["tokenizer"]["special_token_ids"]
        self.vocab_sha256: str = self.manifest["tokenizer"]["sha256"]  # the vocabulary the shards were made with
        self.fingerprint = file_sha256(os.path.join(folder, MANIFEST_FILE))
        self._offsets: list[np.ndarray] = []
        self._values: list[np.ndarray] = []
        self._a_lengths: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        sizes = []
        for table in tables:
            for batch in table.to_batches():
                if batch.num_rows == 0:
                    continue
                ids = batch.column(0)
                self._offsets.append(ids.offsets.to_numpy())
                self._values.append(ids.values.to_numpy(zero_copy_only=True))
                self._a_lengths.append(batch.column(1).to_numpy())
                self._labels.append(batch.column(2).to_numpy())
                sizes.append(batch.num_rows)
        self._ends = np.cumsum(sizes, dtype=np.int64)
        if not sizes:
            raise DataError(f"{folder}: the shard set has no examples")

    def __len__(self) -> int:
        return int(self._ends[-1])

    def example(self, index: int) -> tuple[np.ndarray, int, int]:
        """(token ids `[CLS] A [SEP] B [SEP]`, length of A, SOP label) of example `index`."""
        chunk = int(np.searchsorted(self._ends, index, side="right"))
        row = index - (int(self._ends[chunk - 1]) if chunk else 0)
        offsets = self._offsets[chunk]
        tokens = self._values[chunk][offsets[row] : offsets[row + 1]]
        return tokens, int(self._a_lengths[chunk][row]), int(self._labels[chunk][row])


class SampleOrder:
    """Global sample index -> example index, through a seeded permutation per epoch."""

    def __init__(self, num_examples: int, seed: int) -> None:
        self.num_examples = num_examples
        self.seed = seed
        self._epoch = -1
        self._permutation = np.zeros(0, dtype=np.int64)

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._permutation = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
            self._epoch = epoch
        return self._permutation

    def examples(self, global_samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(epochs, example indices) of a run of global sample indices."""
        epochs = global_samples // self.num_examples
        indices = np.empty_like(global_samples)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            indices[here] = self.permutation(int(epoch))[global_samples[here] % self.num_examples]
        return epochs, indices


_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def uniform(seed: int, stream: int, epochs: np.ndarray, samples: np.ndarray, width: int) -> np.ndarray:
    """[len(samples), width] uniforms in [0, 1), a pure function of (seed, stream, epoch, sample, position)."""
    with np.errstate(over="ignore"):
        key = _splitmix(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ _splitmix(np.uint64(stream)))
        row = _splitmix(key ^ _splitmix(samples.astype(np.uint64) ^ (epochs.astype(np.uint64) << np.uint64(40))))
        bits = _splitmix(row[:, None] ^ np.arange(width, dtype=np.uint64)[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


class Batcher:
    """Builds the micro-batch of a run of global sample indices: gather, pad, mask, collate."""

    def __init__(self, shards: ShardSet, seed: int, masking: MaskingConfig, max_predictions: int, held_out: int = 0,
                 document_order: bool = False, eval_shards: ShardSet | None = None, eval_count: int = 0) -> None:
        """`max_predictions`: masked tokens per sequence at most (the phase's). Evaluation reads the first
        `eval_count` examples of `eval_shards` (a held-out split made by data_prep) or, without those, the last
        `held_out` examples of `shards`, which training then never sees.
        `document_order`: MLM only; a pair stored swapped for SOP is put back in the order of its text."""
        masking.validate()  # the run config's own checks, for a Batcher built without a run config
        if max_predictions < 1:
            raise DataError(f"max_predictions {max_predictions}: must be at least 1")
        if not 0 <= held_out < len(shards):
            raise DataError(f"{shards.folder}: cannot hold out {held_out} of {len(shards)} examples for evaluation")
        if eval_shards is not None and held_out:
            raise ValueError("evaluate either on eval_shards or on held-out examples of the training shards")
        self.shards = shards
        self.document_order = document_order
        self.seed = seed
        self.masking = masking
        self.max_predictions = max_predictions
        self.num_train = len(shards) - held_out  # the last `held_out` examples are for evaluation only
        if eval_shards is None:
            self.eval_set, self.eval_start, self.eval_count = shards, self.num_train, held_out
        else:
            self.eval_set, self.eval_start, self.eval_count = eval_shards, 0, min(eval_count, len(eval_shards))
        self.order = SampleOrder(self.num_train, seed)
        special = np.array(sorted(set(shards.special_ids.values())), dtype=np.int64)
        self.special = special
        self.pad_id = shards.special_ids["[PAD]"]
        self.mask_id = shards.special_ids["[MASK]"]
        self.normal_ids = np.setdiff1d(np.arange(shards.vocab_size, dtype=np.int64), special)
        self.continuation = continuation_pieces(shards) if masking.whole_word else None

    def __call__(self, global_samples: np.ndarray, evaluation: bool = False) -> dict[str, torch.Tensor]:
        """Training: global sample indices through the epoch order. Evaluation: evaluation example k for
        k in `global_samples` (taken modulo their count), with fixed masks."""
        global_samples = np.asarray(global_samples, dtype=np.int64)
        if evaluation:
            offsets = global_samples % max(self.eval_count, 1)
            epochs, indices = np.full_like(offsets, -1), self.eval_start + offsets
        else:
            epochs, indices = self.order.examples(global_samples)
        source = self.eval_set if evaluation else self.shards
        rows = [source.example(int(i)) for i in indices]
        if self.document_order:
            rows = [in_document_order(*row) for row in rows]
        lengths = np.fromiter((len(r[0]) for r in rows), dtype=np.int64, count=len(rows))
        width = int(-(-lengths.max() // PAD_TO_MULTIPLE) * PAD_TO_MULTIPLE)
        count = len(rows)
        input_ids = np.full((count, width), self.pad_id, dtype=np.int64)
        for row, (ids, _, _) in enumerate(rows):
            input_ids[row, : len(ids)] = ids
        positions = np.arange(width)[None, :]
        a_lengths = np.fromiter((r[1] for r in rows), dtype=np.int64, count=count)
        attention_mask = positions < lengths[:, None]
        token_type_ids = (positions >= (a_lengths + 2)[:, None]) & attention_mask
        sop_labels = np.fromiter((r[2] for r in rows), dtype=np.int64, count=count)
        masked_ids, mlm_labels = self.mask(input_ids, attention_mask, epochs, global_samples)
        return {
            "input_ids": torch.from_numpy(masked_ids),
            "attention_mask": torch.from_numpy(attention_mask.astype(np.int64)),
            "token_type_ids": torch.from_numpy(token_type_ids.astype(np.int64)),
            "mlm_labels": torch.from_numpy(mlm_labels),
            "sop_labels": torch.from_numpy(sop_labels),
            # flat indices of the masked tokens: their count is then known without asking the device
            "mlm_positions": torch.from_numpy(np.flatnonzero(mlm_labels != IGNORE_INDEX)),
        }

    def mask(self, input_ids: np.ndarray, attention_mask: np.ndarray, epochs: np.ndarray,
             samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        config = self.masking
        width = input_ids.shape[1]
        candidates = attention_mask & ~np.isin(input_ids, self.special)
        keys = np.where(candidates, uniform(self.seed, 0, epochs, samples, width), 2.0)
        if config.whole_word:
            chosen = self.choose_words(input_ids, candidates, keys)
        else:
            budget = np.minimum(
                self.max_predictions,
                np.maximum(1, np.rint(candidates.sum(1) * config.probability).astype(np.int64)),
            )
            budget = np.minimum(budget, candidates.sum(1))
            # The `budget` candidates with the smallest keys are chosen: a uniform random subset.
            ranks = np.empty_like(keys, dtype=np.int64)
            np.put_along_axis(ranks, np.argsort(keys, axis=1, kind="stable"), np.arange(width)[None, :], axis=1)
            chosen = ranks < budget[:, None]
        action = uniform(self.seed, 1, epochs, samples, width)
        replacement = self.normal_ids[
            np.minimum((uniform(self.seed, 2, epochs, samples, width) * len(self.normal_ids)).astype(np.int64),
                       len(self.normal_ids) - 1)
        ]
        labels = np.where(chosen, input_ids, IGNORE_INDEX)
        masked = input_ids.copy()
        to_mask = chosen & (action < config.replace_with_mask)
        to_random = chosen & (action >= config.replace_with_mask) & (
            action < config.replace_with_mask + config.replace_with_random)
        masked[to_mask] = self.mask_id
        masked[to_random] = replacement[to_random]
        return masked, labels

    def choose_words(self, input_ids: np.ndarray, candidates: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Whole words, in the random order of the keys at their first pieces: `probability` of the
        words (at least 1), each taken whole, passing over a word that would exceed `max_predictions`
        tokens (Google's whole-word BERT). A `##` piece right after a candidate continues its word."""
        config = self.masking
        follows_candidate = np.zeros_like(candidates)
        follows_candidate[:, 1:] = candidates[:, :-1]
        starts = candidates & ~(self.continuation[input_ids] & follows_candidate)
        word = np.cumsum(starts, axis=1) - 1  # the word of each position (meaningful on candidates)
        chosen = np.zeros_like(candidates)
        for row in range(len(input_ids)):
            start_positions = np.flatnonzero(starts[row])
            if not len(start_positions):
                continue
            lengths = np.bincount(word[row][candidates[row]], minlength=len(start_positions))
            wanted = max(1, int(np.rint(len(start_positions) * config.probability)))
            taken, tokens = [], 0
            for index in np.argsort(keys[row, start_positions], kind="stable"):
                if len(taken) == wanted:
                    break
                if tokens + lengths[index] <= self.max_predictions:
                    taken.append(index)
                    tokens += int(lengths[index])
            chosen[row] = candidates[row] & np.isin(word[row], taken)
        return chosen


def in_document_order(ids: np.ndarray, a_length: int, swapped: int) -> tuple[np.ndarray, int, int]:
    """`[CLS] A [SEP] B [SEP]` stored with A and B swapped (SOP label 1) as `[CLS] B [SEP] A [SEP]`: the text
    in the order it was written, label 0."""
    if not swapped:
        return ids, a_length, 0
    first, second = ids[1 : 1 + a_length], ids[2 + a_length : -1]
    return np.concatenate([ids[:1], second, ids[1 + a_length : 2 + a_length], first, ids[-1:]]), len(second), 0


def continuation_pieces(shards: ShardSet) -> np.ndarray:
    """Per token id, whether it continues a word (`##` pieces of a WordPiece vocabulary), read from the
    vocabulary beside the shards."""
    path = os.path.join(vocab_beside(shards.folder), VOCAB_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            pieces = [line.rstrip("\n") for line in handle]
    except OSError as error:
        raise DataError(f"{shards.folder}: whole-word masking needs the vocabulary beside the shards ({path}: "
                        f"{error.strerror}); copy it there or turn masking.whole_word off") from None
    continuation = np.zeros(max(shards.vocab_size, len(pieces)), dtype=bool)
    continuation[: len(pieces)] = [piece.startswith("##") for piece in pieces]
    return continuation


def rank_slice(step: int, micro_step: int, global_batch: int, micro_batch: int, rank: int,
               world_size: int) -> np.ndarray:
    """Global sample indices of one micro-batch of one rank: step s takes [s*B, (s+1)*B); micro-step a
    takes the a-th run of micro_batch * world_size of those, and rank r the r-th micro_batch of that."""
    start = step * global_batch + (micro_step * world_size + rank) * micro_batch
    return np.arange(start, start + micro_batch, dtype=np.int64)


class MicroBatches(torch.utils.data.Dataset):
    """Map-style dataset whose item k is this rank's k-th micro-batch from `consumed_samples` on, so
    `torch.utils.data.DataLoader` (batch_size=None) prefetches them in background workers."""

    def __init__(self, batcher: Batcher, global_batch: int, micro_batch: int, rank: int, world_size: int,
                 start_step: int, total_steps: int) -> None:
        if global_batch % (micro_batch * world_size):
            raise DataError(
                f"global batch {global_batch} is not a multiple of micro-batch {micro_batch} x data-parallel "
                f"size {world_size}"
            )
        self.batcher = batcher
        self.global_batch, self.micro_batch = global_batch, micro_batch
        self.rank, self.world_size = rank, world_size
        self.accumulation = global_batch // (micro_batch * world_size)
        self.start_step, self.total_steps = start_step, total_steps

    def __len__(self) -> int:
        return (self.total_steps - self.start_step) * self.accumulation

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        step, micro_step = divmod(item, self.accumulation)
        return self.batcher(rank_slice(self.start_step + step, micro_step, self.global_batch, self.micro_batch,
                                       self.rank, self.world_size))


LOADER_WORKERS = 2  # each builds whole steps, alternately
# So the next two steps are built while the device computes one. Each step in flight passes through shared
# memory (/dev/shm): at the paper's length 512 (32 micro-batches of 32 per rank) about 17 MB a step per rank.
STEPS_AHEAD_PER_WORKER = 1


def step_loader(dataset: MicroBatches, pin_memory: bool, worker_init_fn=None) -> torch.utils.data.DataLoader:
    """Yields, per optimizer step, the list of this rank's `accumulation` micro-batches of that step, built in
    background workers several steps ahead. A step needs all its micro-batches before its first forward (the
    loss is normalized by the step's masked-token count), so the unit of prefetch is the step: a loader of
    single micro-batches with a few in flight left the device idle at every step start while the rest of the
    step was built. Pinned (on CUDA) so each copy to the device runs without the host waiting for it."""
    steps = [range(step * dataset.accumulation, (step + 1) * dataset.accumulation)
             for step in range(len(dataset) // dataset.accumulation)]
    return torch.utils.data.DataLoader(dataset, batch_sampler=steps, collate_fn=list, num_workers=LOADER_WORKERS,
                                       prefetch_factor=STEPS_AHEAD_PER_WORKER, persistent_workers=False,
                                       pin_memory=pin_memory, worker_init_fn=worker_init_fn)


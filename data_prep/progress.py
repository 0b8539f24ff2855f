"""The progress bar and the closing summary of `data_prep shards`."""

from __future__ import annotations

import sys
import time

from formats.layout import seq_folder, shard_set_name


class Progress:
    """A tqdm bar over input bytes (with an ETA when the input size is known), documents/s and tokens/s."""

    def __init__(self, total_bytes: int | None, enabled: bool) -> None:
        from tqdm import tqdm

        self.start = time.monotonic()
        self.documents = 0
        self.tokens = 0
        self.resumed_units = 0
        self.enabled = enabled
        self.bar = tqdm(
            total=total_bytes, unit="B", unit_scale=True, desc="shards", disable=not enabled,
            dynamic_ncols=True, file=sys.stderr,
        )

    def advance(self, input_bytes: int, record: dict | None, resumed: bool = False) -> None:
        if record is not None and not resumed:
            self.documents += record["inputs"]["documents"]
            self.tokens += record["inputs"]["tokens"]
        self.resumed_units += resumed
        elapsed = max(time.monotonic() - self.start, 1e-9)
        self.bar.set_postfix(docs_per_s=f"{self.documents / elapsed:,.0f}",
                             tokens_per_s=f"{self.tokens / elapsed:,.0f}", refresh=False)
        self.bar.update(input_bytes)

    def close(self) -> None:
        self.bar.close()

    def summary(self, manifests: dict, out_dir: str) -> None:
        """`manifests`: (length, split) → manifest."""
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.start
        seq_len = min(n for n, _ in manifests)
        per_split = {split: manifests[n, split]["inputs"] for n, split in manifests if n == seq_len}
        inputs = {key: sum(counts.get(key, 0) for counts in per_split.values())
                  for key in ("documents", "sentences", "tokens")}
        lines = [
            f"data_prep: {inputs['documents']:,} documents, {inputs['sentences']:,} sentences, "
            f"{inputs['tokens']:,} input tokens in {elapsed:,.1f} s "
            f"({self.tokens / max(elapsed, 1e-9):,.0f} tokens/s this run; {self.resumed_units} units kept from before)"
        ]
        if "heldout" in per_split:
            lines.append(f"  held out: {per_split['heldout'].get('documents', 0):,} documents "
                         f"({per_split['heldout'].get('tokens', 0) / max(inputs['tokens'], 1):.2%} of the tokens)")
        for (length, split), manifest in manifests.items():
            totals = manifest["totals"]
            lines.append(
                f"  {shard_set_name(length, split)}: {totals['examples']:,} examples, "
                f"{totals['tokens']:,} tokens in {totals['shards']} shards -> {seq_folder(out_dir, length, split)}"
            )
        skipped = manifests[seq_len, "train"]["skipped"]
        if skipped:
            lines.append("  skipped: " + ", ".join(f"{k}={v:,}" for k, v in skipped.items()))
        print("\n".join(lines), file=sys.stderr)

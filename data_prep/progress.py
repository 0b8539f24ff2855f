"""The progress bar and the closing summary of `data_prep shards`."""

from __future__ import annotations

import sys
import time

from formats.layout import seq_folder


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
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.start
        first = next(iter(manifests.values()))
        lines = [
            f"data_prep: {first['inputs'].get('documents', 0):,} documents, "
            f"{first['inputs'].get('sentences', 0):,} sentences, "
            f"{first['inputs'].get('tokens', 0):,} input tokens in {elapsed:,.1f} s "
            f"({self.tokens / max(elapsed, 1e-9):,.0f} tokens/s this run; {self.resumed_units} units kept from before)"
        ]
        for seq_len, manifest in manifests.items():
            totals = manifest["totals"]
            lines.append(
                f"  seq{seq_len}: {totals['examples']:,} examples, {totals['tokens']:,} tokens "
                f"in {totals['shards']} shards"
                f" -> {seq_folder(out_dir, seq_len)}"
            )
        if first["skipped"]:
            lines.append("  skipped: " + ", ".join(f"{k}={v:,}" for k, v in first["skipped"].items()))
        print("\n".join(lines), file=sys.stderr)

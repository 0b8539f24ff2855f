"""The on-disk formats both stages share, and the one user-facing error base.

`data_prep` writes through this package and `pretrain` (and finetuning) reads through it; neither imports
the other's internals. It owns:

- `errors`: `UserError`, the base of every error a command line reports as one line (exit 2);
- `files`: atomic file and folder writes (temporary name, fsync, rename: never a partial file under its
  final name, never a moment without the old or the new folder) and file hashing;
- `layout`: where things are in a prepared data folder (`seqN/` shard sets, the vocabulary beside them);
- `shards`: the Arrow shard files (schema, writer, memory-mapped reader);
- `manifest`: a shard set's `manifest.json` (build, load, verify);
- `vocabulary`: the vocabulary's file names, its copy, and its identity (the sha256 of `tokenizer.json`,
  `vocab.txt` agreeing) checked against what a manifest or a checkpoint records.
"""

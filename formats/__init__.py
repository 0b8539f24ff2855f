"""The on-disk formats both stages share, and the one user-facing error base (`errors.UserError`).

`data_prep` writes through this package, `pretrain` and `finetune` read through it, and it imports none of
them. What each module owns: docs/design.md, "Where each behaviour lives".
"""

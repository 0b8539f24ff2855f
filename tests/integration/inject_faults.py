"""Runs `python -m pretrain ARGS` with faults injected into the real trainer, for the tests of its guards.

    python -m tests.integration.inject_faults [--nan-steps 4,5] [--nccl-error-step N] -- train --config ...

--nan-steps: the encoder's output is NaN while computing those global steps (0-based: the step about to
  be taken), so the loss and every gradient are NaN, as after a diverged update or a corrupt batch.
--nccl-error-step: the step's all-reduce raises the `DistBackendError` that NCCL raises when a peer dies.
--fail-rank R --fail-step S: rank R raises an error of its own at the start of global step S, while its peers
  go on into the step's first collective (a rank-local failure between two collectives).
--autocast-query-as-cuda: `torch.is_autocast_enabled()` with no argument answers with the CPU's autocast
  state, as it answers with the CUDA state in a GPU process: DeepSpeed's `engine.forward` asks it and then
  re-enters autocast disabled, so this process takes the branch a GPU run takes. The dtypes of the MLM
  logits that reach the engine's caller are printed as one JSON line on stdout at the end.

Only the fault is injected: the trainer, its checks and its command line are the real ones.
"""

import argparse
import json
import sys

import torch
import torch.distributed as dist


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nan-steps", default="")
    parser.add_argument("--nccl-error-step", type=int, default=-1)
    parser.add_argument("--autocast-query-as-cuda", action="store_true")
    parser.add_argument("--fail-rank", type=int, default=-1)
    parser.add_argument("--fail-step", type=int, default=-1)
    parser.add_argument("pretrain_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    nan_steps = {int(step) for step in args.nan_steps.split(",") if step}
    pretrain_args = args.pretrain_args[1:] if args.pretrain_args[:1] == ["--"] else args.pretrain_args

    from pretrain import trainer as trainer_module
    from pretrain.__main__ import main as pretrain_main

    original_init = trainer_module.Trainer.__init__
    logits_dtypes = set()
    if args.autocast_query_as_cuda:
        is_enabled = torch.is_autocast_enabled
        torch.is_autocast_enabled = lambda *device: is_enabled(*(device or ("cpu",)))

    def init(self, config):
        original_init(self, config)

        def poison(module, inputs, output):
            if self.state.global_step in nan_steps:
                hidden, pooled = output
                return hidden * float("nan"), pooled
        self.model.transformer.register_forward_hook(poison)
        self.engine.register_forward_hook(
            lambda module, inputs, output: logits_dtypes.add(str(output.mlm_logits.dtype)))

        all_reduce = dist.all_reduce

        def failing_all_reduce(tensor, *rest, **kwargs):
            if self.state.global_step == args.nccl_error_step:
                raise dist.DistBackendError(
                    "NCCL error in: /pytorch/torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:3356, remote process "
                    "exited or there was a network error, NCCL version 2.27.3\nncclRemoteError: A call failed "
                    "possibly due to a network error or a remote process exiting prematurely.\nLast error:\n"
                    "socket recv: Connection reset by peer")
            return all_reduce(tensor, *rest, **kwargs)
        dist.all_reduce = failing_all_reduce

        train_step = self.train_step

        def failing_train_step(*step_args):
            if self.rank == args.fail_rank and self.state.global_step == args.fail_step:
                raise RuntimeError(f"injected fault on rank {self.rank} at step {self.state.global_step}")
            return train_step(*step_args)
        self.train_step = failing_train_step

    trainer_module.Trainer.__init__ = init
    code = pretrain_main(pretrain_args)
    if args.autocast_query_as_cuda:
        print(json.dumps({"logits_dtypes": sorted(logits_dtypes)}))
    return code


if __name__ == "__main__":
    sys.exit(main())

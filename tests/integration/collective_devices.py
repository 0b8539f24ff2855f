"""Runs `python -m pretrain train ARGS` with every collective's tensor checked for where it was made.

A process group made with NCCL takes CUDA tensors only: a CPU tensor handed to a collective fails at once
on a GPU ("No backend type associated with device type cpu"), and passes on the CPU, where the engine's
device is the CPU too. This harness tells the two apart on a CPU: a torch function mode marks every tensor
made on the host by default (a factory call such as `torch.tensor([1])` with no `device`, `.cpu()`,
`from_numpy`) and everything computed from one; a tensor placed explicitly (`.to(device)`, a factory with
`device=`) is not marked. Each collective (all_reduce, broadcast, all_gather, ...) records whether its
tensor carries the mark: on a GPU, such a tensor is a CPU tensor.

It also counts the accelerator synchronizations DeepSpeed is asked for (`get_accelerator().synchronize`,
a no-op on the CPU, a host wait on a GPU).

Prints one JSON line on stdout: {"collectives": N, "host_made": [[op, caller], ...], "synchronize": N} and
exits with the trainer's code. Object collectives (all_gather_object) are not checked: torch moves their bytes to the
device the backend needs.
"""

import json
import sys
import traceback

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

FACTORIES = {torch.tensor, torch.as_tensor, torch.from_numpy, torch.zeros, torch.ones, torch.full, torch.empty,
             torch.arange, torch.rand, torch.randn, torch.randint}
COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor",
               "reduce", "all_to_all_single")


def _placed(func, args, kwargs) -> bool:
    """`.to(device)`: the code chose the device (on a CPU engine that is the CPU too, and is right)."""
    if func is not torch.Tensor.to:
        return False
    return any(isinstance(t, (str, torch.device)) for t in list(args[1:]) + [kwargs.get("device")])


class HostMade(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        inputs, _ = tree_flatten((args, kwargs))
        if _placed(func, args, kwargs):
            made_on_host = False
        else:
            made_on_host = (
                (func in FACTORIES and kwargs.get("device") is None)
                or func is torch.Tensor.cpu
                or any(getattr(t, "_made_on_host", False) for t in inputs if isinstance(t, torch.Tensor))
            )
        for output in tree_flatten(result)[0]:
            if isinstance(output, torch.Tensor) and (made_on_host or _placed(func, args, kwargs)):
                output._made_on_host = made_on_host
        return result


def caller() -> str:
    """The innermost frame of the project's own code (pretrain/) that led to the collective."""
    frames = [f for f in traceback.extract_stack()[:-2] if "/pretrain/" in f.filename]
    frame = frames[-1] if frames else traceback.extract_stack()[-3]
    return f"{frame.filename.rsplit('/', 2)[-2]}/{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} {frame.line}"


def main() -> int:
    report = {"collectives": 0, "host_made": [], "synchronize": 0}

    def checked(name, original):
        def collective(*args, **kwargs):
            report["collectives"] += 1
            tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
            if any(getattr(t, "_made_on_host", False) for t in tensors):
                report["host_made"].append([name, caller()])
            return original(*args, **kwargs)
        return collective

    for name in COLLECTIVES:
        setattr(dist, name, checked(name, getattr(dist, name)))
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    synchronize = accelerator.synchronize

    def counted_synchronize(*args, **kwargs):
        report["synchronize"] += 1
        return synchronize(*args, **kwargs)
    accelerator.synchronize = counted_synchronize
    from pretrain.__main__ import main as pretrain_main

    with HostMade():
        code = pretrain_main(sys.argv[1:])
    print(json.dumps(report), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())

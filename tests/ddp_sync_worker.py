"""Run under `accelerate launch --num_processes 2` (DDP, gloo): counts gradient all-reduces over one optimizer step of
three micro-batches through tina's Dist.backward, and checks the accumulated gradient.  Prints one JSON line on rank 0.
"""

from __future__ import annotations

import json
import sys

import torch

from tina import distributed


def main() -> None:
    dist = distributed.init(cpu=True, timeout_s=120)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    wrapped, optimizer = dist.prepare(model, optimizer)
    calls = []

    def counting_allreduce(state, bucket):
        calls.append(1)
        fut = torch.distributed.all_reduce(bucket.buffer(), async_op=True).get_future()
        return fut.then(lambda f: f.value()[0] / dist.world_size)

    wrapped.register_comm_hook(None, counting_allreduce)
    xs = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)  # [rank, micro-batch, features]
    for i in range(3):
        dist.sync_gradients(wrapped, i == 2)  # as tina.train.update does before each pass
        loss = wrapped(xs[dist.rank, i][None]).sum()
        dist.backward(loss, last=i == 2)
    grad = model.weight.grad.detach().clone()
    expected = xs.sum(1).mean(0)  # d/dw of sum over micro-batches, averaged over the two processes
    if dist.is_main:
        print(
            json.dumps({"allreduce_calls": len(calls), "grad": grad.view(-1).tolist(), "expected": expected.tolist()}),
            flush=True,
        )
    dist.barrier()


if __name__ == "__main__":
    sys.exit(main())

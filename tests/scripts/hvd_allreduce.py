"""Run under `horovodrun -np 2`: allreduce a tensor, take a wrapped optimizer step, report weights."""
import json
import sys

import horovod.torch as hvd
import torch

hvd.init()
rank, size = hvd.rank(), hvd.size()
torch.set_num_threads(1)

# Allreduce: the average of (rank + 1) over ranks, and the sum.
x = torch.full((3,), float(rank + 1))
mean = hvd.allreduce(x, name="mean", op=hvd.Average)
total = hvd.allreduce(x, name="sum", op=hvd.Sum)

# A model whose initial weights differ per rank, made identical by the broadcast, then trained on
# rank-specific data: gradients are averaged, so weights stay identical.
torch.manual_seed(100 + rank)
model = torch.nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
hvd.broadcast_parameters(model.state_dict(), root_rank=0)
hvd.broadcast_optimizer_state(opt, root_rank=0)
initial = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())
for _ in range(3):
    opt.zero_grad()
    loss = model(torch.randn(8, 4)).pow(2).mean()
    loss.backward()
    opt.step()

flat = torch.cat([p.detach().flatten() for p in model.parameters()])
gathered = hvd.allgather(flat.unsqueeze(0))
assert torch.equal(gathered[0], gathered[1]), "weights differ across ranks"

with open(f"{sys.argv[1]}.rank{rank}.json", "w") as f:
    json.dump({"rank": rank, "size": size, "mean": mean.tolist(), "sum": total.tolist(),
               "weights": flat.tolist(), "initial": initial.tolist()}, f)

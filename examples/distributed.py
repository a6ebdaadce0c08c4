"""UNSC on several processes: statistics over each rank's shard of D_r, summed; bases
decomposed layer by layer across ranks; unlearning with FSDP2-sharded parameters.

    torchrun --nproc_per_node 2 examples/distributed.py          # CPU (gloo) or GPUs (nccl)

Synthetic data so it runs anywhere; swap in your model and loaders. Prints, on rank 0, how
far the outputs on D_r moved and how many forget samples still get their class.
"""
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import unsc_fast as uf


def main() -> None:
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dev = torch.device("cpu")
    if cuda:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(dev)

    torch.manual_seed(0)  # same model and data on every rank; each rank uses its shard of D_r
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 8 * 8, 4)).to(dev)
    with torch.no_grad():  # "class 3" is what the model predicts as 3; forget it
        pool = torch.randn(1024, 1, 8, 8, device=dev)
        is3 = model(pool).argmax(1) == 3
        forget, retain = pool[is3], pool[~is3][:128]
        before = model(retain)
        pseudo = uf.pseudo_labels(model(forget), forget_classes=[3])

    # 1. statistics of this rank's shard, summed over ranks (upper triangles, bucketed)
    shard = retain[rank::world]
    moments = uf.SecondMoments(model).collect(shard.split(64), progress=False).all_reduce_()
    # 2. each rank decomposes a share of the layers; every rank receives all bases
    bases = uf.NullSpace.from_moments(moments, "threshold:1e-6", distribute=True)

    # 3. shard the parameters by rows (FSDP2) and fine-tune on D_f inside the null space:
    # project_ projects each rank's rows of the gradient locally.
    mesh = init_device_mesh(dev.type, (world,))
    for layer in (model[0], model[3]):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    params = uf.freeze_for_unlearning(model, bases)  # BN/dropout eval, only projected weights train
    opt = torch.optim.SGD(params, lr=0.2)
    for _ in range(50):
        opt.zero_grad()
        nn.functional.cross_entropy(model(forget), pseudo).backward()
        uf.project_(model, bases)
        opt.step()

    with torch.no_grad():
        after = model(retain)
        still = (model(forget).argmax(1) == 3).float().mean().item()
    if rank == 0:
        moved = ((after - before).norm() / before.norm()).item()
        print(f"world {world}: {len(forget)} samples of class 3 forgotten, {still:.0%} still"
              f" predicted as 3 (100% before); outputs on D_r moved by {moved:.1e} (relative)")
    dist.barrier()  # no rank tears down while another still talks
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

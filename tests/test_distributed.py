"""Statistics summed over torch.distributed ranks equal statistics of all the data at once."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import unsc_fast as uf


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Flatten(), nn.Linear(3 * 5 * 5, 4))


def _worker(rank, world, port, x, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        m = uf.SecondMoments(_model(), dtype=torch.float64)
        m.collect([x.chunk(world)[rank]], progress=False).all_reduce_()
        if rank == 0:
            torch.save(m.state_dict(), out)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")
def test_all_reduce_sums_statistics(tmp_path):
    x = torch.randn(6, 2, 5, 5)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "rank0.pt"
    mp.start_processes(_worker, args=(2, port, x, str(out)), nprocs=2, start_method="spawn")
    reduced = torch.load(out, weights_only=False)
    full = uf.SecondMoments(_model(), dtype=torch.float64).collect([x], progress=False)
    for name, lm in full.moments.items():
        torch.testing.assert_close(reduced[name]["S"], torch.triu(lm.S))
        assert reduced[name]["n"] == lm.n

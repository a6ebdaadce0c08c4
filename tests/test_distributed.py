"""UNSC over torch.distributed (2 gloo ranks on CPU, one spawn for all checks, ~10 s):
summed statistics equal statistics of all the data at once; bases decomposed layer by layer
across ranks equal single-process bases; FSDP2 row-sharded gradients are projected exactly as
the full gradients; mismatches between ranks raise on every rank instead of hanging."""
import os
import socket
import subprocess
import sys
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import unsc_fast as uf
from unsc_fast.distributed import assign_layers

WORLD = 2


def _model():
    torch.manual_seed(0)
    # groups=3 with 6 output rows: each rank's FSDP2 shard (3 rows) crosses a group boundary.
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, groups=3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(6 * 5 * 5, 4)).double()


class Conv1D(nn.Module):
    """Shaped like transformers' Conv1D (weight (in, out)); recognised by duck typing."""

    def __init__(self, nx, nf):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf, dtype=torch.float64) * 0.3)
        self.bias = nn.Parameter(torch.zeros(nf, dtype=torch.float64))

    def forward(self, x):
        return x @ self.weight + self.bias


class Block(nn.Module):
    """q and k read the same tensor (one shared statistic); c is a Conv1D."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k = nn.Linear(6, 5).double(), nn.Linear(6, 5).double()
        self.c = Conv1D(5, 3)

    def forward(self, x):
        return self.c(torch.tanh(self.q(x) * self.k(x)))


class Tok(nn.Module):
    """An embedding (vocab 20: each FSDP2 rank holds 10 token rows) and a head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.out = nn.Embedding(20, 4).double(), nn.Linear(4, 3).double()

    def forward(self, ids):
        return self.out(self.emb(ids))


def _ids(seed, rows):
    return torch.randint(0, 20, (rows, 5), generator=torch.Generator().manual_seed(seed))


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 5, 5, generator=g, dtype=torch.float64)


def _raised(fn) -> str:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001  (the test compares type and message)
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    res = {}
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor import Shard, distribute_tensor
        x = _data()
        # 1. statistics of this rank's half, summed; 16-row blocks and a tiny bucket make the
        # packing cut S into many block rows and buckets.
        uf.distributed._block_rows = lambda d: 16
        m = uf.SecondMoments(_model(), dtype=torch.float64, include_bias=True)
        m.collect([x.chunk(WORLD)[rank]], progress=False).all_reduce_(bucket_mb=1e-3)
        res["moments"] = m.state_dict()
        # 2. bases, each layer decomposed by its owner and broadcast.
        bases = uf.NullSpace.from_moments(m, "energy:0.9", distribute=True,
                                          dtype=torch.float64)
        res["bases"] = bases.state_dict()
        # 3. FSDP2: both ranks see the same batch, so the reduced gradient is the full one.
        model = _model()
        mesh = init_device_mesh("cpu", (WORLD,))
        for layer in (model[0], model[3]):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        model(x).square().sum().backward()
        uf.project_(model, bases)
        res["fsdp_grads"] = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
        # 4. a column-sharded gradient cannot be projected row by row.
        w = nn.Parameter(distribute_tensor(torch.randn(4, 6), mesh, [Shard(1)]))
        w.grad = distribute_tensor(torch.randn(4, 6), mesh, [Shard(1)])
        one = uf.NullSpace({"l": uf.LayerBasis("linear", 6, [torch.eye(6)[:, :2]], [True],
                                                 [2])})
        res["shard1"] = _raised(lambda: uf.project_({"l.weight": w}, one))
        # 5. statistics not summed (different row counts): every rank refuses.
        unsummed = uf.SecondMoments(_model(), dtype=torch.float64)
        unsummed.collect([x[: 2 + rank]], progress=False)
        res["unsummed"] = _raised(lambda: uf.NullSpace.from_moments(unsummed, distribute=True))
        # 6. different layers per rank: all_reduce_ refuses on every rank.
        layers = ["3"] if rank else None
        res["layers"] = _raised(lambda: uf.SecondMoments(_model(), layers=layers).all_reduce_())
        # 7. the owner of the only layer fails (no data): the other rank raises too.
        empty = uf.SecondMoments(nn.Linear(3, 2))
        res["owner_fails"] = _raised(lambda: uf.NullSpace.from_moments(empty, distribute=True))
        # 8. shared inputs and a Conv1D: summed once, decomposed once, broadcast; FSDP2 shards
        # a Conv1D weight on its input dimension, which cannot be projected locally.
        tokens = torch.randn(10, 4, 6, generator=torch.Generator().manual_seed(2),
                             dtype=torch.float64)
        sm = uf.SecondMoments(Block(), dtype=torch.float64)
        sm.collect([tokens.chunk(WORLD)[rank]], progress=False).all_reduce_()
        res["shared"] = dict(sm.shared)
        res["shared_bases"] = uf.NullSpace.from_moments(sm, "energy:0.95", distribute=True,
                                                        dtype=torch.float64).state_dict()
        block = Block()
        fully_shard(block, mesh=mesh)
        block(tokens).sum().backward()
        res["conv1d_shard"] = _raised(lambda: uf.project_(block, uf.NullSpace.from_moments(
            sm, "energy:0.95", distribute=True, dtype=torch.float64)))
        # 9. an embedding: int64 token counts summed, token-id bases broadcast, its row-sharded
        # gradient masked on each rank's own rows.
        em = uf.SecondMoments(Tok(), dtype=torch.float64, embeddings=True)
        em.collect([_ids(3, 6).chunk(WORLD)[rank]], progress=False).all_reduce_()
        res["emb_moments"] = em.state_dict()
        eb = uf.NullSpace.from_moments(em, "energy:0.9", distribute=True)
        res["emb_bases"] = eb.state_dict()
        tok = Tok()
        fully_shard(tok, mesh=mesh)
        tok(_ids(4, 4)).square().sum().backward()
        uf.project_(tok, eb)
        res["emb_grads"] = {n: p.grad.full_tensor() for n, p in tok.named_parameters()}
    except Exception:  # noqa: BLE001  (reported by the parent)
        res["crash"] = traceback.format_exc()
    finally:
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    if not dist.is_available():
        pytest.skip("torch.distributed is not built")
    out = tmp_path_factory.mktemp("dist")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_worker, args=(port, str(out)), nprocs=WORLD, start_method="spawn")
    res = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for r in res:
        assert "crash" not in r, r["crash"]
    return res


def test_all_reduce_sums_statistics(ranks):
    full = uf.SecondMoments(_model(), dtype=torch.float64, include_bias=True)
    full.collect([_data()], progress=False)
    for res in ranks:
        for name, lm in full.moments.items():
            got = res["moments"][name]
            torch.testing.assert_close(torch.triu(got["S"]), torch.triu(lm.S))
            torch.testing.assert_close(got["colsum"], lm.colsum)
            assert got["n"] == lm.n


def test_distributed_bases_equal_single_process(ranks):
    full = uf.SecondMoments(_model(), dtype=torch.float64, include_bias=True)
    expected_t, expected_meta = uf.NullSpace.from_moments(
        full.collect([_data()], progress=False), "energy:0.9", dtype=torch.float64).state_dict()
    for res in ranks:
        tensors, meta = res["bases"]
        assert meta == expected_meta
        for key, B in expected_t.items():
            # Same input, same eigh: equal up to each eigenvector's sign.
            torch.testing.assert_close(tensors[key] @ tensors[key].T, B @ B.T)


def test_fsdp2_row_shards_project_like_full_gradients(ranks):
    tensors, meta = ranks[0]["bases"]
    bases = uf.NullSpace({n: uf.LayerBasis(m["kind"], m["d"],
                                           [tensors[f"{n}/{g}"] for g in range(len(m["ranks"]))],
                                           m["subtract"], m["ranks"], m["include_bias"])
                          for n, m in meta.items()})
    model = _model()
    model(_data()).square().sum().backward()
    uf.project_(model, bases)
    for name, p in model.named_parameters():
        torch.testing.assert_close(ranks[0]["fsdp_grads"][name], p.grad, rtol=1e-9, atol=1e-9)
    # The projection did something: the raw gradient differs.
    raw = _model()
    raw(_data()).square().sum().backward()
    assert not torch.allclose(raw[0].weight.grad, model[0].weight.grad)


def test_mismatches_raise_on_every_rank(ranks):
    for rank, res in enumerate(ranks):
        assert res["shard1"].startswith("ValueError") and "Shard(0)" in res["shard1"]
        assert res["unsummed"].startswith("ValueError") and "all_reduce_" in res["unsummed"]
        assert res["layers"].startswith("ValueError") and "different layers" in res["layers"]
        if rank == 0:  # owner of the only layer
            assert res["owner_fails"].startswith("ValueError") and "empty" in res["owner_fails"]
        else:
            assert res["owner_fails"].startswith("RuntimeError") and "[0]" in res["owner_fails"]


def test_assign_layers_balances_cost():
    owner = assign_layers([8.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], 2)
    load = [sum(c for c, o in zip([8.0] + [1.0] * 8, owner) if o == r) for r in range(2)]
    assert sorted(load) == [8.0, 8.0]
    assert assign_layers([1.0, 2.0], 4) == [1, 0]


def test_distributed_example_runs():
    """examples/distributed.py, as README.md tells users to launch it (torchrun, 2 ranks)."""
    if not dist.is_available():
        pytest.skip("torch.distributed is not built")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", os.path.join(root, "examples", "distributed.py")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=root)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("world 2:"))
    still = int(line.split("forgotten, ")[1].split("%")[0])
    moved = float(line.rsplit("moved by ", 1)[1].split()[0])
    assert still <= 5 and moved < 1e-4, line


def test_shared_inputs_and_conv1d_over_ranks(ranks):
    tokens = torch.randn(10, 4, 6, generator=torch.Generator().manual_seed(2),
                         dtype=torch.float64)
    full = uf.SecondMoments(Block(), dtype=torch.float64).collect([tokens], progress=False)
    expected_t, expected_meta = uf.NullSpace.from_moments(full, "energy:0.95",
                                                          dtype=torch.float64).state_dict()
    assert expected_meta["k"] == {"same_as": "q"} and expected_meta["c"]["kind"] == "conv1d"
    for res in ranks:
        assert res["shared"] == {"k": "q"}
        tensors, meta = res["shared_bases"]
        assert meta == expected_meta
        for key, B in expected_t.items():
            torch.testing.assert_close(tensors[key] @ tensors[key].T, B @ B.T)
        assert res["conv1d_shard"].startswith("ValueError") and "input dimension" in \
            res["conv1d_shard"]


def test_embedding_counts_bases_and_row_shards_over_ranks(ranks):
    full = uf.SecondMoments(Tok(), dtype=torch.float64, embeddings=True)
    full.collect([_ids(3, 6)], progress=False)
    bases = uf.NullSpace.from_moments(full, "energy:0.9")
    tok = Tok()
    tok(_ids(4, 4)).square().sum().backward()
    uf.project_(tok, bases)
    expected_t, expected_meta = bases.state_dict()
    assert expected_meta["emb"]["kind"] == "embedding"
    for res in ranks:
        got = res["emb_moments"]["emb"]
        assert got["S"].dtype == torch.int64 and got["n"] == 30
        assert torch.equal(got["S"], full.moments["emb"].S)
        tensors, meta = res["emb_bases"]
        assert meta == expected_meta and torch.equal(tensors["emb/0"], expected_t["emb/0"])
        for n, p in tok.named_parameters():
            torch.testing.assert_close(res["emb_grads"][n], p.grad, rtol=1e-12, atol=1e-12)

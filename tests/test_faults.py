"""The fault campaign: bad inputs and faults a demanding user meets, each with its promise.

Promises: a failed command leaves nothing behind and never replaces an existing output;
numerical failure is never saved, returned or evaluated quietly; corrupt inputs are refused;
every API entry point validates before it changes any state.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import unsc_fast as uf
from unsc_fast.cli import checkpoint as ck
from unsc_fast.io import Outputs, clean_stale

from cli_helpers import ROOT, TINY, run  # noqa: E402


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    d = tmp_path_factory.mktemp("orig")
    assert run("train", "--out", d / "orig.safetensors", *TINY, "--epochs", "2") == 0
    return d / "orig.safetensors"


def _snapshot(d: Path) -> dict:
    """Every file under ``d`` (hidden ones included) with its bytes."""
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in d.rglob("*") if p.is_file()}


def _fails(capsys, *args, match: str, code: int = 1) -> str:
    assert run(*args) == code
    err = capsys.readouterr().err
    assert match in err, err
    assert len(err.strip().splitlines()) == 1, err
    return err


def _unwritable(tmp_path: Path, how: str) -> Path:
    if how == "missing-dir":
        return tmp_path / "no" / "such" / "x.safetensors"
    if how == "under-a-file":
        (tmp_path / "f").write_text("x")
        return tmp_path / "f" / "x.safetensors"
    if how == "read-only-fs":
        return Path("/proc/x.safetensors")          # not writable, even by root
    raise AssertionError(how)


# -- 1, 2: all-or-nothing commands, checked before any work -----------------------------------

@pytest.mark.parametrize("how", ["missing-dir", "under-a-file", "read-only-fs"])
@pytest.mark.parametrize("flag", ["--bases-out", "--report", "--out"])
def test_unlearn_one_bad_output_writes_none(original, tmp_path, capsys, monkeypatch, how,
                                            flag):
    keep = tmp_path / "keep.safetensors"
    keep.write_bytes(b"old model")
    bad = _unwritable(tmp_path, how)
    if flag == "--report":
        bad = bad.with_suffix(".json")
    outs = {"--out": keep, "--bases-out": tmp_path / "b.safetensors",
            "--report": tmp_path / "r.json", flag: bad}
    if flag == "--out":
        outs["--bases-out"] = keep
    before = _snapshot(tmp_path)
    calls = []
    monkeypatch.setattr("unsc_fast.cli.jobs.run_method", lambda *a, **k: calls.append(a))
    err = _fails(capsys, "unlearn", "--checkpoint", original, "--forget", "3", "--epochs", "1",
                 *[x for kv in outs.items() for x in kv], match=str(bad.parent))
    assert ".tmp" not in err and ".unsc_fast-" not in err
    assert calls == []                                   # refused before any work
    assert _snapshot(tmp_path) == before                 # keep.safetensors untouched


@pytest.mark.parametrize("bad_flag", ["--out", "--bases-out"])
def test_stats_one_bad_output_writes_none(original, tmp_path, capsys, bad_flag):
    good = tmp_path / "s.safetensors"
    good.write_bytes(b"old stats")
    outs = {"--out": good, "--bases-out": tmp_path / "b.pt"}
    outs[bad_flag] = Path("/proc/s.safetensors")
    if bad_flag == "--out":
        outs["--bases-out"] = good
    before = _snapshot(tmp_path)
    _fails(capsys, "stats", "--checkpoint", original, "--forget", "3",
           *[x for kv in outs.items() for x in kv], match="/proc/s.safetensors")
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("where", ["save_bases", "save_moments"])
@pytest.mark.parametrize("fault", [KeyboardInterrupt, OSError, RuntimeError])
def test_a_fault_while_writing_leaves_no_output(original, tmp_path, capsys, monkeypatch, where,
                                                fault):
    out, bases = tmp_path / "s.safetensors", tmp_path / "b.safetensors"
    out.write_bytes(b"old")
    real = getattr(ck, where)

    def broken(path, *a, **k):
        if where == "save_moments":
            raise fault("disk fell off")
        real(path, *a, **k)                     # stages the file, then the fault
        raise fault("disk fell off")
    monkeypatch.setattr(ck, where, broken)
    code = run("stats", "--checkpoint", original, "--out", out, "--bases-out", bases,
               "--forget", "3", "--quiet")
    assert code == (130 if fault is KeyboardInterrupt else 1)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert _snapshot(tmp_path) == {"s.safetensors": b"old"}


def _commit_with_a_failing_rename(tx, monkeypatch, fails) -> None:
    """``tx.commit()`` while ``os.replace(src, dst)`` raises ENOSPC where ``fails(src, dst)``
    (paths as strings); the commit must raise."""
    real = os.replace

    def flaky(src, dst):
        if fails(str(src), str(dst)):
            raise OSError(28, "No space left on device")
        real(src, dst)
    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError):
        tx.commit()
    monkeypatch.setattr(os, "replace", real)


def test_commit_is_all_or_nothing_when_a_rename_fails(tmp_path, monkeypatch):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.write_bytes(b"old a")
    b.write_bytes(b"old b")
    with Outputs() as tx:
        for p in (a, b, c):
            tx.plan(p)
        for p in (a, b, c):
            tx.stage(p, lambda f, p=p: f.write(b"new " + p.name.encode()))
        n = []
        _commit_with_a_failing_rename(
            tx, monkeypatch, lambda src, dst: src.endswith(".tmp") and len(n.append(dst) or n) == 3)
    assert _snapshot(tmp_path) == {"a": b"old a", "b": b"old b"}
    with Outputs() as tx:                                # and a good commit puts all in place
        for p in (a, c):
            tx.plan(p)
            tx.stage(p, lambda f: f.write(b"new"))
        tx.commit()
    assert _snapshot(tmp_path) == {"a": b"new", "b": b"old b", "c": b"new"}


def _staged(tmp_path, names=("a", "b", "c")):
    tx = Outputs()
    for n in names:
        tx.plan(tmp_path / n)
    for n in names:
        tx.stage(tmp_path / n, lambda f, n=n: f.write(b"new " + n.encode()))
    return tx


@pytest.fixture
def ctrl_c():
    """Sends a Ctrl-C as a terminal does, with Python's own handler in place (an earlier
    test or library may have left another one) and time to reach the main thread: a signal
    the kernel hands to another thread is run by Python at the main thread's next check."""
    handler = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def send():
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(100):            # each sleep ends early once the handler has run
            time.sleep(0.001)
    yield send
    signal.signal(signal.SIGINT, handler)


def test_ctrl_c_during_commit_waits_until_every_output_is_in_place(tmp_path, monkeypatch,
                                                                   ctrl_c):
    (tmp_path / "a").write_bytes(b"old a")
    real = os.replace

    def interrupted(src, dst):          # Ctrl-C arrives between the first and second rename
        real(src, dst)
        if str(dst).endswith("a"):
            ctrl_c()
    tx = _staged(tmp_path)
    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tx.commit()
    monkeypatch.setattr(os, "replace", real)
    assert _snapshot(tmp_path) == {"a": b"new a", "b": b"new b", "c": b"new c"}
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_cannot_cut_the_roll_back_short(tmp_path, monkeypatch, ctrl_c):
    """A rename fails, the roll-back starts, and Ctrl-C arrives during it: the user's old
    files are all restored first, and no backup is left behind."""
    (tmp_path / "a").write_bytes(b"old a")
    (tmp_path / "b").write_bytes(b"old b")
    real = os.replace

    def flaky(src, dst):
        if str(src).endswith(".tmp") and str(dst).endswith("c"):
            raise OSError(28, "No space left on device")
        if str(src).endswith(".bak"):                 # restoring: the second Ctrl-C
            ctrl_c()
        real(src, dst)
    tx = _staged(tmp_path)
    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises((KeyboardInterrupt, OSError)):
        tx.commit()
    monkeypatch.setattr(os, "replace", real)
    assert _snapshot(tmp_path) == {"a": b"old a", "b": b"old b"}


def test_outputs_refuse_the_same_path_twice_and_create_planned_dirs(tmp_path):
    with Outputs() as tx:
        tx.plan(tmp_path / "x.json")
        with pytest.raises(ValueError, match="are the same file"):
            tx.plan(tmp_path / "." / "x.json")
    with Outputs() as tx:                   # a new output directory vanishes on failure
        d = tmp_path / "new" / "deep"
        tx.plan_dir(d)
        tx.stage(d / "r.json", lambda f: f.write(b"{}"))
        assert d.is_dir()
    assert not (tmp_path / "new").exists()


def _old(p: Path, age: float = 3600) -> Path:
    t = time.time() - age
    os.utime(p, (t, t))
    return p


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("name, old, removed", [
    ("dead", True, True),          # a killed writer's file: removed
    ("dead", False, False),        # young: its writer may have just died, or be a pid reuse
    ("self", True, False),         # a live writer's file (this process)
    ("foreign", True, False),      # not ours: never touched
    ("user", True, False),         # the user's own hidden file
])
def test_stale_temporary_files_are_cleaned_safely(tmp_path, name, old, removed):
    fname = {"dead": f".unsc_fast-{_dead_pid()}-m.safetensors.abc.tmp",
             "self": f".unsc_fast-{os.getpid()}-m.safetensors.abc.tmp",
             "foreign": ".m.safetensors.abc.tmp", "user": ".unsc_fast-notes.txt"}[name]
    p = tmp_path / fname
    p.write_bytes(b"x" * 100)
    if old:
        _old(p)
    with Outputs() as tx:                # planning an output in that directory cleans it
        tx.plan(tmp_path / "out.safetensors")
    assert p.exists() is not removed
    assert clean_stale(tmp_path) == []


def test_a_killed_write_leaves_a_temp_that_the_next_run_removes(original, tmp_path):
    # SIGKILL mid-write, for real: the child stalls inside the write and is killed
    code = ("import sys, time; from unsc_fast.io import atomic_save;"
            "atomic_save(sys.argv[1], lambda f: (f.write(b'x' * 2**20), f.flush(),"
            " print('writing', flush=True), time.sleep(60)))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "m.safetensors")],
                         stdout=subprocess.PIPE, env=env, text=True)
    assert p.stdout.readline().strip() == "writing"
    p.send_signal(signal.SIGKILL)
    p.wait()
    left = [q for q in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].name.startswith(f".unsc_fast-{p.pid}-")
    _old(left[0])
    assert run("stats", "--checkpoint", original, "--out", tmp_path / "s.pt", "--forget", "3",
               "--quiet") == 0
    assert sorted(q.name for q in tmp_path.iterdir()) == ["s.pt"]


def test_sigint_at_start_up_is_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    codes = []
    for delay in (0.8, 0.4, 1.5):       # within torch's import on a loaded machine
        p = subprocess.Popen([sys.executable, "-m", "unsc_fast", "evaluate", "--checkpoint",
                              "x.pt"], cwd=tmp_path, env=env, stderr=subprocess.PIPE,
                             text=True)
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        err = p.communicate(timeout=120)[1]
        codes.append(p.returncode)
        if p.returncode == 130:
            assert err.strip() == "unsc-fast: interrupted", err
            break
        assert "Traceback" not in err, err
    assert 130 in codes, codes
    assert list(tmp_path.iterdir()) == []


# -- 3, 4: numerical failure is never saved, returned or evaluated quietly ---------------------

def test_a_single_diverging_step_is_not_saved(original, tmp_path, capsys):
    keep = tmp_path / "u.safetensors"
    keep.write_bytes(b"old")
    _fails(capsys, "unlearn", "--checkpoint", original, "--out", keep, "--forget", "3",
           "--lr", "1e30", "--batch-size", "1000", "--epochs", "1", "--quiet",
           match="NaN/Inf")
    assert _snapshot(tmp_path) == {"u.safetensors": b"old"}


def _tiny_task(seed=0, single=False):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(64, 8)
    y = torch.randint(0, 4, (64,))
    forget = [(x[:16], y[:16]), (x[16:32], y[16:32])]
    return model, forget[:1] if single else forget, [x[32:]]


def test_api_unlearn_checks_outputs_after_the_last_step():
    model, forget, retain = _tiny_task(single=True)         # one step: every loss finite
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FloatingPointError, match="probe samples"):
        uf.unlearn(model, forget, retain, lr=1e30, epochs=1, project=False, progress=False)
    assert model.training                                      # mode restored
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize("damage", ["nan", "inf", "huge"])
def test_evaluate_refuses_a_broken_checkpoint(original, tmp_path, capsys, damage):
    model, meta = ck.load_checkpoint(original)
    with torch.no_grad():
        if damage == "huge":          # finite weights, non-finite logits
            for p in model.parameters():
                p.mul_(1e15)
        else:
            next(model.parameters()).view(-1)[0] = float(damage)
    bad = tmp_path / "bad.safetensors"
    ck.save_checkpoint(bad, model, {k: v for k, v in meta.items() if k != "fingerprint"})
    _fails(capsys, "evaluate", "--checkpoint", original, bad, "--out", tmp_path / "r.json",
           "--forget", "3", match="NaN")
    assert not (tmp_path / "r.json").exists()


# -- 5: statistics cannot lose a layer to underflow or overflow --------------------------------

def _moved_by_step(scale: float, dtype) -> float:
    """Relative change of a layer's outputs on D_r after one projected SGD step."""
    torch.manual_seed(0)
    layer = nn.Linear(32, 8, bias=False)
    basis = torch.randn(32, 4)
    X = (torch.randn(256, 4) @ basis.T) * scale          # D_r spans 4 of 32 directions
    m = uf.SecondMoments(nn.Sequential(layer), dtype=dtype).collect([X], progress=False)
    bases = uf.NullSpace.from_moments(m, "energy:0.999999")
    before = X.double() @ layer.weight.double().T
    layer.weight.grad = torch.randn_like(layer.weight)
    uf.project_({"0.weight": layer.weight}, bases)
    with torch.no_grad():
        layer.weight -= layer.weight.grad
    after = X.double() @ layer.weight.double().T
    return float((after - before).norm() / before.norm())


@pytest.mark.parametrize("scale", [1e-30, 1e-22, 1e-20])
def test_tiny_inputs_are_refused_in_fp32_and_protected_in_fp64(scale):
    with pytest.raises(ValueError, match="float64 statistics"):
        _moved_by_step(scale, torch.float32)
    assert _moved_by_step(scale, torch.float64) < 1e-5


@pytest.mark.parametrize("scale", [1e-12, 1.0, 1e12])
def test_ordinary_scales_are_protected_in_fp32(scale):
    assert _moved_by_step(scale, torch.float32) < 1e-3


@pytest.mark.parametrize("scale, dtype", [(1e25, torch.float32), (1e20, torch.float32)])
def test_overflowing_inputs_are_refused(scale, dtype):
    with pytest.raises(ValueError, match="overflowed"):
        _moved_by_step(scale, dtype)


def test_huge_inputs_are_protected_in_fp64():
    assert _moved_by_step(1e25, torch.float64) < 1e-5


def test_an_all_zero_layer_is_not_an_underflow():
    m = uf.SecondMoments(nn.Sequential(nn.Linear(4, 2))).collect([torch.zeros(8, 4)],
                                                                   progress=False)
    assert m.moments["0"].n == 8


@pytest.mark.parametrize("rule, text", [("energy:1", "empty null space"),
                                        ("rank:0", "empty core")])
def test_empty_core_or_null_space_is_a_warning_everywhere(rule, text):
    model, forget, retain = _tiny_task()
    with pytest.warns(RuntimeWarning, match=text):
        res = uf.unlearn(model, forget, retain, rule=rule, epochs=1, progress=False)
    assert any(text in w for w in res.report.warnings)
    assert text in res.bases.summary()


# -- 6: corrupt bases and statistics are refused on load ---------------------------------------

def _bases_file(tmp_path: Path) -> tuple[Path, dict]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 8))
    X = torch.randn(256, 6) @ torch.randn(6, 32)
    m = uf.SecondMoments(model).collect([X], progress=False)
    bases = uf.NullSpace.from_moments(m, "energy:0.999")
    path = tmp_path / "b.pt"
    bases.save(path)
    return path, torch.load(path)


@pytest.mark.parametrize("edit, match", [
    (lambda B: B.mul_(3), "orthonormal"),
    (lambda B: B.copy_(torch.randn_like(B)), "orthonormal"),
    (lambda B: B.view(-1)[5].fill_(float("nan")), "NaN"),
    (lambda B: B.view(-1)[5].fill_(float("inf")), "NaN"),
    (lambda B: B[:, 0].mul_(1.01), "orthonormal"),            # a subtle edit
    (lambda B: B[:, 1].copy_(B[:, 0]), "orthonormal"),        # a repeated column
])
def test_corrupt_bases_are_refused(tmp_path, edit, match):
    path, blob = _bases_file(tmp_path)
    assert blob["tensors"]["0/0"].shape[1] > 1
    edit(blob["tensors"]["0/0"])
    torch.save(blob, path)
    with pytest.raises(ValueError, match=match):
        uf.NullSpace.load(path)


@pytest.mark.parametrize("meta_edit", [
    lambda m: m["0"].update(ranks=[m["0"]["ranks"][0] + 1]),     # rank and columns disagree
    lambda m: m["0"].update(d=m["0"]["d"] + 1),
])
def test_bases_whose_ranks_or_shapes_disagree_are_refused(tmp_path, meta_edit):
    path, blob = _bases_file(tmp_path)
    meta_edit(blob["meta"])
    torch.save(blob, path)
    with pytest.raises(ValueError):
        uf.NullSpace.load(path)


def test_sound_bases_load(tmp_path):
    path, _ = _bases_file(tmp_path)
    uf.NullSpace.load(path).validate()


def _stats_state():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3))
    m = uf.SecondMoments(model).collect([torch.randn(32, 6)], progress=False)
    return model, m.state_dict()


@pytest.mark.parametrize("edit, match", [
    (lambda s: s.update(n=-5), "sample count"),
    (lambda s: s.update(n=2.5), "sample count"),
    (lambda s: s.update(n=True), "sample count"),
    (lambda s: s.update(n=0), "n = 0"),
    (lambda s: s["S"].view(-1)[1].fill_(float("nan")), "NaN"),
    (lambda s: s["S"].view(-1)[0].fill_(float("inf")), "NaN"),
    (lambda s: s["S"][0].diagonal().mul_(-1), "negative diagonal"),
    (lambda s: s.update(S=s["S"] + torch.tril(torch.ones_like(s["S"]), -1)), "symmetric"),
])
def test_corrupt_statistics_are_refused_before_any_is_written(edit, match):
    model, state = _stats_state()
    edit(state["0"])
    m = uf.SecondMoments(model)
    with pytest.raises(ValueError, match=match):
        m.load_state_dict(state)
    assert m.moments["0"].n == 0 and not m.moments["0"].S.any()


def test_non_psd_statistics_are_refused_by_the_bases():
    model, state = _stats_state()
    S = torch.eye(6)
    S[0, 1] = S[1, 0] = 3.0                     # positive diagonal, eigenvalue -2
    state["0"]["S"][0] = torch.triu(S)
    m = uf.SecondMoments(model)
    m.load_state_dict(state)
    with pytest.raises(ValueError, match="positive semi-definite"):
        uf.NullSpace.from_moments(m)


def test_cli_refuses_corrupt_saved_statistics(original, tmp_path, capsys):
    st = tmp_path / "s.safetensors"
    assert run("stats", "--checkpoint", original, "--out", st, "--forget", "3",
               "--quiet") == 0
    tensors, meta = ck.load_tensors(st, "statistics file")
    name = next(iter(meta["layers"]))
    meta["layers"][name]["n"] = -1
    ck.save_tensors(st, tensors, meta)
    _fails(capsys, "unlearn", "--checkpoint", original, "--stats", st, "--out",
           tmp_path / "u.pt", "--forget", "3", "--quiet", match="sample count")
    assert not (tmp_path / "u.pt").exists()


# -- 7: every entry point validates before it changes state ------------------------------------

def _two_layer_grads():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    m = uf.SecondMoments(model).collect([torch.randn(64, 8)], progress=False)
    bases = uf.NullSpace.from_moments(m, "energy:0.9")
    model(torch.randn(4, 8)).sum().backward()
    return model, bases


@pytest.mark.parametrize("break_layer_2", [
    lambda lb: lb.to(dtype=torch.float64),                                   # dtype
    lambda lb: type(lb)(lb.kind, lb.d + 1, [torch.zeros(lb.d + 1, lb.bases[0].shape[1])],
                        lb.subtract, lb.ranks),                              # shape
    lambda lb: type(lb)(lb.kind, lb.d, lb.bases, lb.subtract, lb.ranks, True),  # bias, none
])
def test_project_refuses_before_touching_any_gradient(break_layer_2):
    model, bases = _two_layer_grads()
    layers = dict(bases.items())
    layers["2"] = break_layer_2(layers["2"])
    model[2].bias.grad = None
    before = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    with pytest.raises((ValueError, TypeError)):
        uf.project_(model, uf.NullSpace(layers))
    after = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_raw_ops_refuse_aliased_arguments():
    S = torch.zeros(4, 4)
    with pytest.raises(ValueError, match="share memory"):
        uf.ops.accumulate_(S, S)
    with pytest.raises(ValueError, match="share memory"):
        uf.ops.accumulate_(S, S[1:3])
    buf = torch.zeros(200)                                 # conv: S and x in one buffer
    S3, x = buf[:81].view(1, 9, 9), buf[50:].view(1, 1, 10, 15)
    with pytest.raises(ValueError, match="share memory"):
        uf.ops.accumulate_conv_(S3, x, uf.ConvGeometry.of(nn.Conv2d(1, 1, 3)))
    G = torch.randn(3, 4)
    with pytest.raises(ValueError, match="share memory"):
        uf.ops.project_grads_([G], [G.T[:, :2]], [True])
    big = torch.randn(10, 4)
    g2 = big[:3]
    b2 = torch.linalg.qr(torch.randn(4, 2))[0]
    keep = big.clone()
    with pytest.raises(ValueError, match="share memory"):
        uf.ops.project_grads_([big[6:10].T.contiguous(), g2], [big[2:6], b2], [True, True])
    assert torch.equal(big, keep)                          # nothing written


def test_unlearn_refuses_a_one_shot_forget_iterator():
    model, forget, retain = _tiny_task()
    with pytest.raises(TypeError, match="re-iterable"):
        uf.unlearn(model, iter(forget), retain, epochs=1, progress=False)
    with pytest.raises(TypeError, match="re-iterable"):
        uf.unlearn(model, (b for b in forget), retain, epochs=1, progress=False)


@pytest.mark.parametrize("classes", [[1.5], [True], ["1"], [1, 2.0], 3])
def test_unlearn_refuses_non_integer_class_ids(classes):
    model, forget, retain = _tiny_task()
    model.train()
    with pytest.raises(TypeError, match="class ids"):
        uf.unlearn(model, forget, retain, forget_classes=classes, epochs=1, progress=False)
    assert model.training


@pytest.mark.parametrize("classes", [[torch.tensor(1)], [__import__("numpy").int64(2)]])
def test_unlearn_takes_integer_like_class_ids(classes):
    model, forget, retain = _tiny_task()
    uf.unlearn(model, forget, retain, forget_classes=classes, epochs=1, progress=False)


def test_a_failed_unlearn_restores_the_original_mode():
    model, forget, retain = _tiny_task()
    model.train()
    bad = [(forget[0][0] * float("nan"), forget[0][1])]
    with pytest.raises(FloatingPointError):
        uf.unlearn(model, bad, retain, epochs=1, project=False, progress=False)
    assert model.training


@pytest.mark.parametrize("args, match", [
    (["compare", "--seeds", "0", "0"], "more than once"),
    (["compare", "--seeds", "1", "0", "1"], "more than once"),
    (["stats", "--scenario", "class", "--forget", "1", "2"], "forgets one class"),
])
def test_config_faults(original, tmp_path, capsys, args, match):
    extra = ["--out", tmp_path / "o"] if args[0] == "compare" else \
        ["--checkpoint", original, "--out", tmp_path / "s.pt"]
    _fails(capsys, *args, *extra, *([] if args[0] == "stats" else TINY), match=match)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("classes", [[1.5], [True], ["2"]])
def test_scenario_refuses_non_integer_classes(classes):
    from unsc_fast.lab.scenarios import Scenario
    with pytest.raises(ValueError, match="integer"):
        Scenario.from_dict({"kind": "classes", "classes": classes})


# -- the unlearned checkpoint records how it was made ------------------------------------------

def test_unlearned_checkpoint_records_its_making(original, tmp_path):
    out = tmp_path / "u.safetensors"
    assert run("unlearn", "--checkpoint", original, "--out", out, "--forget", "3", "--lr",
               "0.01", "--epochs", "2", "--batch-size", "32", "--rule", "energy:0.95",
               "--quiet") == 0
    meta = ck.load_checkpoint(out)[1]
    made = meta["unlearn"]
    assert made["method"] == "unsc" and made["rule"] == "energy:0.95"
    assert (made["lr"], made["epochs"], made["batch_size"]) == (0.01, 2, 32)
    assert meta["versions"] == {"unsc_fast": uf.__version__, "torch": torch.__version__}


def test_partly_overlapping_gradients_are_refused_before_any_is_written():
    W = torch.randn(6, 6, dtype=torch.float64)

    def basis(d):
        return torch.linalg.qr(torch.randn(d, 1, dtype=torch.float64))[0]
    uf.ops.project_grads_([W[::2], W[1::2]], [basis(6)] * 2, [True] * 2)  # interleaved: fine
    for bad in ([W[:3], W[2:]], [W[::2], W[1::2], W[2:3]], [W[:, :4].T, W[:, 3:].T]):
        before = W.clone()
        with pytest.raises(ValueError, match="overlap"):
            uf.ops.project_grads_(bad, [basis(t.shape[1]) for t in bad], [True] * len(bad))
        assert torch.equal(W, before)


def test_a_forward_that_fails_midway_leaves_statistics_that_refuse_to_be_used(tmp_path):
    class Flaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)
            self.calls = 0

        def forward(self, x):
            h = self.a(x)
            self.calls += 1
            if self.calls == 3:  # probe, batch 0, then batch 1 dies between the layers
                raise RuntimeError("device lost")
            return self.b(h)
    m = uf.SecondMoments(Flaky())
    with pytest.raises(RuntimeError, match="device lost"):
        m.collect([torch.randn(8, 4), torch.randn(8, 4)], progress=False)
    for use in (lambda: uf.NullSpace.from_moments(m), lambda: m.save(tmp_path / "s.pt"),
                lambda: m.merge_(m)):
        with pytest.raises(RuntimeError, match="incomplete"):
            use()
    assert not (tmp_path / "s.pt").exists()


@pytest.mark.parametrize("op", ["accumulate", "accumulate_conv"])
def test_raw_accumulate_refuses_an_overflowing_update_before_writing(op):
    if op == "accumulate":
        S, x = torch.zeros(3, 3), torch.full((4, 3), 1e19)
        run = lambda: uf.ops.accumulate_(S, x)  # noqa: E731
    else:
        S, x = torch.zeros(1, 4, 4), torch.full((1, 1, 3, 3), 1e19)
        run = lambda: uf.ops.accumulate_conv_(S, x, uf.ConvGeometry((2, 2)))  # noqa: E731
    with pytest.raises(ValueError, match="overflow"):
        run()
    assert not S.any()
    uf.ops.accumulate_(torch.zeros(3, 3, dtype=torch.float64), torch.full((4, 3), 1e19))


def test_directory_outputs_join_the_transaction(tmp_path, monkeypatch):
    """A directory output (a Hugging Face model) is staged whole and renamed in with the
    files; when a later rename fails, the old directory comes back intact."""
    model, report = tmp_path / "model", tmp_path / "r.json"
    model.mkdir()
    (model / "config.json").write_bytes(b"old config")

    def write(d):
        (d / "config.json").write_bytes(b"new config")
        (d / "weights").write_bytes(b"w")
    with Outputs() as tx:
        tx.plan(model, directory=True)
        tx.plan(report)
        tx.stage_dir(model, write)
        tx.stage(report, lambda f: f.write(b"{}"))
        _commit_with_a_failing_rename(
            tx, monkeypatch, lambda src, dst: dst.endswith("r.json") and src.endswith(".tmp"))
    assert _snapshot(tmp_path) == {"model/config.json": b"old config"}
    with Outputs() as tx:
        tx.plan(model, directory=True)
        tx.stage_dir(model, write)
        tx.commit()
    assert _snapshot(tmp_path) == {"model/config.json": b"new config", "model/weights": b"w"}
    with Outputs() as tx:                      # a failing writer leaves nothing behind
        tx.plan(model, directory=True)
        with pytest.raises(RuntimeError):
            tx.stage_dir(model, lambda d: ((d / "x").write_bytes(b"x"), 1 / 0 if False
                                           else (_ for _ in ()).throw(RuntimeError("bug"))))
    assert _snapshot(tmp_path) == {"model/config.json": b"new config", "model/weights": b"w"}


def test_a_killed_writers_staged_directory_is_cleaned(tmp_path):
    d = tmp_path / f".unsc_fast-{_dead_pid()}-model.abc.tmp"
    d.mkdir()
    (d / "w").write_bytes(b"x")
    _old(d)
    assert clean_stale(tmp_path) == [d]
    assert not d.exists()

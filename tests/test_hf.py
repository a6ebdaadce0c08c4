"""``unsc_fast.hf.NullSpaceCallback`` inside a real ``transformers.Trainer`` (tiny LLaMA, CPU).

The retained data has fewer tokens than any layer has input features, so every layer's
inputs span a proper subspace and ``energy:1`` leaves a real null space: a projected step
must leave the logits on the retained sequences unchanged (up to rounding, float64), an
unprojected one must move them.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it

import unsc_fast  # noqa: E402
from unsc_fast.hf import NullSpaceCallback  # noqa: E402

VOCAB, SEQ = 64, 8
ROOT = Path(__file__).resolve().parents[1]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=4, intermediate_size=64,
                                   vocab_size=VOCAB, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).to(torch.float64)


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, ids: torch.Tensor):
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


@pytest.fixture(scope="module")
def setup():
    g = torch.Generator().manual_seed(1)
    retain = torch.randint(0, VOCAB, (3, SEQ), generator=g)   # 24 tokens < 32 and < 64 features
    forget = torch.randint(0, VOCAB, (4, SEQ), generator=g)
    model = _model()
    moments = unsc_fast.SecondMoments(model, dtype=torch.float64).collect(
        [{"input_ids": retain, "attention_mask": torch.ones_like(retain)}], progress=False)
    bases = unsc_fast.NullSpace.from_moments(moments, "energy:1", dtype=torch.float64)
    assert all(lb.d - lb.ranks[0] > 0 for lb in bases.values()), "every layer needs a null space"
    return retain, forget, bases


@torch.no_grad()
def _logits(model, ids):
    model.eval()
    out = model(input_ids=ids).logits
    model.train()
    return out


def _train(tmp_path, bases, forget, *, callback=True, accumulation=1, max_grad_norm=0.0,
           lr=1.0, extra_callbacks=()):
    model = _model()
    params = unsc_fast.freeze_for_unlearning(model, bases)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=1,
        per_device_train_batch_size=len(forget) // accumulation,
        gradient_accumulation_steps=accumulation, max_grad_norm=max_grad_norm, report_to=[],
        use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True,
        lr_scheduler_type="constant", dataloader_num_workers=0, seed=0)
    cbs = ([NullSpaceCallback(bases)] if callback else []) + list(extra_callbacks)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Tokens(forget),
                                   optimizers=(torch.optim.SGD(params, lr=lr), None),
                                   callbacks=cbs)
    trainer.train()
    return model, args


def _rel_change(model, retain):
    before = _logits(_model(), retain)
    after = _logits(model, retain)
    return ((after - before).norm() / before.norm()).item()


def test_projected_step_keeps_retained_logits(tmp_path, setup):
    retain, forget, bases = setup
    model, _ = _train(tmp_path, bases, forget)
    assert _rel_change(model, retain) < 1e-5
    moved = sum((p - q).abs().sum().item() for p, q in zip(model.parameters(),
                                                            _model().parameters()))
    assert moved > 0, "the projected step changed no weight"


def test_unprojected_step_moves_retained_logits(tmp_path, setup):
    retain, forget, bases = setup
    model, _ = _train(tmp_path, bases, forget, callback=False)
    assert _rel_change(model, retain) > 1e-3


def test_gradient_accumulation(tmp_path, setup):
    retain, forget, bases = setup
    model, _ = _train(tmp_path, bases, forget, accumulation=2)
    assert _rel_change(model, retain) < 1e-5


def test_gpt2_conv1d_projected_step(tmp_path, setup):
    """GPT-2's Conv1D layers (weights stored (in, out)), through the Trainer; its dropout is
    on while the Trainer trains (Trainer calls model.train()), the projection is exact anyway."""
    retain, forget, _ = setup
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB,
                                  n_positions=32, bos_token_id=0, eos_token_id=0)

    def gpt2():
        torch.manual_seed(0)
        return transformers.GPT2LMHeadModel(cfg).to(torch.float64)

    model = gpt2()
    moments = unsc_fast.SecondMoments(model, dtype=torch.float64).collect(
        [{"input_ids": retain}], progress=False)
    bases = unsc_fast.NullSpace.from_moments(moments, "energy:1", dtype=torch.float64)
    params = unsc_fast.freeze_for_unlearning(model, bases)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=len(forget),
        max_grad_norm=0.0, report_to=[], use_cpu=True, save_strategy="no",
        logging_strategy="no", disable_tqdm=True, lr_scheduler_type="constant")
    transformers.Trainer(model=model, args=args, train_dataset=_Tokens(forget),
                         optimizers=(torch.optim.SGD(params, lr=1.0), None),
                         callbacks=[NullSpaceCallback(bases)]).train()
    before, after = _logits(gpt2(), retain), _logits(model, retain)
    assert ((after - before).norm() / before.norm()).item() < 1e-5
    assert not torch.equal(model.transformer.h[0].mlp.c_fc.weight,
                           gpt2().transformer.h[0].mlp.c_fc.weight)


class _Recorder(transformers.TrainerCallback):
    """Runs after NullSpaceCallback in on_pre_optimizer_step: sees the gradient stepped with."""

    def __init__(self):
        self.grads: dict[str, torch.Tensor] = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.clone() for n, p in model.named_parameters()
                      if p.grad is not None}


def test_clips_after_projection(tmp_path, setup):
    retain, forget, bases = setup
    clip = 1e-3
    rec = _Recorder()
    model, args = _train(tmp_path, bases, forget, max_grad_norm=clip, extra_callbacks=[rec])
    assert args.max_grad_norm == clip, "max_grad_norm was not restored"
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in rec.grads.values()]))
    assert norm.item() == pytest.approx(clip, rel=1e-4)  # clip_grad_norm_ divides by norm + 1e-6
    for name, lb in bases.items():          # still in the null space: G @ U_r = 0
        G = rec.grads[f"{name}.weight"]
        B = lb.bases[0]
        core = G @ B if lb.subtract[0] else G - (G @ B) @ B.mT
        assert core.norm() <= 1e-9 * max(G.norm(), 1e-30), name
    assert _rel_change(model, retain) < 1e-5


def test_clip_off_by_zero_norm(tmp_path, setup):
    _, forget, bases = setup
    rec = _Recorder()
    _, args = _train(tmp_path, bases, forget, max_grad_norm=0.0, extra_callbacks=[rec])
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in rec.grads.values()]))
    assert norm.item() > 1e-2 and args.max_grad_norm == 0.0


def test_callback_checks_bases():
    with pytest.raises(TypeError):
        NullSpaceCallback({"lm_head": None})


def test_import_unsc_fast_hf_loads_no_transformers():
    code = ("import sys, unsc_fast, unsc_fast.hf; print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.strip()
    assert out == "False"


def test_callback_pickles(setup):
    import pickle
    _, _, bases = setup
    cb = pickle.loads(pickle.dumps(NullSpaceCallback(bases)))
    assert type(cb) is NullSpaceCallback and set(cb.bases) == set(bases)


def test_benchmark_smoke(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "hf.py"), "--tiny", "--threads",
                    "1", "--out", str(tmp_path)], check=True, cwd=ROOT, timeout=300)
    data = json.loads((tmp_path / "hf.json").read_text())
    assert data["stats"]["collect_tokens_per_s"] > 0 and (tmp_path / "hf.md").exists()


@pytest.mark.parametrize("keep", [False, True])
def test_dropout_is_off_during_the_run_and_restored(tmp_path, setup, keep):
    retain, forget, _ = setup
    cfg = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=VOCAB,
                                  n_positions=32, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).to(torch.float64)
    moments = unsc_fast.SecondMoments(model, dtype=torch.float64).collect(
        [{"input_ids": retain}], progress=False)
    bases = unsc_fast.NullSpace.from_moments(moments, "energy:0.99", dtype=torch.float64)
    params = unsc_fast.freeze_for_unlearning(model, bases)
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(m.p > 0 for m in drops)
    seen = []

    class Record(transformers.TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kw):
            seen.extend(m.p for m in drops)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=len(forget),
        report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no",
        disable_tqdm=True)
    transformers.Trainer(model=model, args=args, train_dataset=_Tokens(forget),
                         optimizers=(torch.optim.SGD(params, lr=1e-3), None),
                         callbacks=[NullSpaceCallback(bases, dropout=keep), Record()]).train()
    assert all((p > 0) if keep else (p == 0) for p in seen) and seen
    assert all(m.p == cfg.resid_pdrop or m.p == cfg.attn_pdrop or m.p == cfg.embd_pdrop
               for m in drops) and all(m.p > 0 for m in drops)


def test_trainer_with_embedding_bases(tmp_path, setup):
    """Embeddings opted in: the token-count basis is a row mask; through the Trainer the
    rows of retained tokens stay, the rows of forget-only tokens move, retained logits stay."""
    retain, forget, _ = setup
    model = _model()
    moments = unsc_fast.SecondMoments(model, dtype=torch.float64, embeddings=True).collect(
        [{"input_ids": retain, "attention_mask": torch.ones_like(retain)}], progress=False)
    bases = unsc_fast.NullSpace.from_moments(moments, "energy:1", dtype=torch.float64)
    assert "model.embed_tokens" in bases
    trained, _ = _train(tmp_path, bases, forget)
    assert _rel_change(trained, retain) < 1e-5
    seen = retain.unique()
    only_forget = torch.tensor(sorted(set(forget.flatten().tolist()) - set(seen.tolist())))
    before, after = _model().model.embed_tokens.weight, trained.model.embed_tokens.weight
    assert torch.equal(after[seen], before[seen])
    assert len(only_forget) and not torch.equal(after[only_forget], before[only_forget])

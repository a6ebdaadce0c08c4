"""Hugging Face causal LMs (built from configs, random weights, nothing downloaded): GPT-2's
Conv1D layers, HF batches with padding, shared inputs (q/k/v, gate/up) and tied weights."""
from __future__ import annotations

import pytest
import torch

import unsc_fast as uf

transformers = pytest.importorskip("transformers")


def gpt2(tie: bool = True):
    cfg = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                                  tie_word_embeddings=tie, resid_pdrop=0.0, embd_pdrop=0.0,
                                  attn_pdrop=0.0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).double().eval()


def llama(tie: bool = False):
    cfg = transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=2, max_position_embeddings=32,
                                   tie_word_embeddings=tie)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).double().eval()


def test_gpt2_conv1d_layers_are_covered_and_the_tied_head_is_not():
    model = gpt2()
    moments = uf.SecondMoments(model)
    assert "transformer.h.0.attn.c_attn" in moments.layers
    assert "transformer.h.1.mlp.c_proj" in moments.layers
    assert "lm_head" not in moments.layers  # tied to wte: stays frozen
    assert moments.moments["transformer.h.0.mlp.c_proj"].dim == 64  # Conv1D weight (in, out)
    with pytest.warns(UserWarning, match="tied"):
        uf.SecondMoments(model, layers=["lm_head"])


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("build", [gpt2, llama], ids=["gpt2-conv1d", "llama-linear"])
def test_one_projected_step_leaves_retained_logits_unchanged(build):
    """ε = 1 on rank-deficient inputs (12 tokens < every d): the null space is exact."""
    model = build()
    retain = torch.randint(0, 50, (2, 6))
    moments = uf.SecondMoments(model, dtype=torch.float64).collect([retain], progress=False)
    bases = uf.NullSpace.from_moments(moments, "energy:1", dtype=torch.float64)
    before = _logits(model, retain)
    forget = torch.randint(0, 50, (3, 6))
    moved = {}
    for project in (True, False):
        m = build()
        params = uf.freeze_for_unlearning(m, bases)
        opt = torch.optim.SGD(params, lr=0.5)
        m(input_ids=forget, labels=forget).loss.backward()
        if project:
            uf.project_(m, bases)
        opt.step()
        m.eval()
        moved[project] = float((_logits(m, retain) - before).norm() / before.norm())
    assert moved[True] < 1e-8, moved
    assert moved[False] > 1e-3, moved


def test_padded_batch_statistics_equal_those_of_the_unpadded_tokens():
    model = llama()
    lengths = [5, 3, 6]
    ids = torch.randint(1, 50, (3, 6))
    mask = torch.zeros(3, 6, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    padded = uf.SecondMoments(model, dtype=torch.float64)
    padded.collect([{"input_ids": ids * mask, "attention_mask": mask}], progress=False)
    single = uf.SecondMoments(model, dtype=torch.float64)
    single.collect([ids[i:i + 1, :n] for i, n in enumerate(lengths)], progress=False)
    assert padded.shared == single.shared
    for name, lm in single.moments.items():
        assert padded.moments[name].n == lm.n == sum(lengths)
        torch.testing.assert_close(torch.triu(padded.moments[name].S), torch.triu(lm.S),
                                   rtol=1e-10, atol=1e-12)


def test_token_budget_keeps_whole_sequences():
    model = llama()
    ids = torch.randint(0, 50, (4, 5))
    m = uf.SecondMoments(model).collect([ids, ids], max_tokens=12, progress=False)
    assert m.moments["model.layers.0.mlp.down_proj"].n == 10  # two sequences of 5 fit in 12


def test_shared_inputs_share_one_statistic_and_one_basis(tmp_path):
    model = llama()
    m = uf.SecondMoments(model).collect([torch.randint(0, 50, (2, 7))], progress=False)
    q, k, v = (f"model.layers.0.self_attn.{p}_proj" for p in "qkv")
    assert m.shared[k] == q and m.shared[v] == q
    assert m.shared["model.layers.1.mlp.up_proj"] == "model.layers.1.mlp.gate_proj"
    assert k not in m.moments and "model.layers.0.self_attn.o_proj" not in m.shared
    bases = uf.NullSpace.from_moments(m, "energy:0.99")
    assert list(bases) == m.layers and bases[q] is bases[k] is bases[v]
    assert f"shared with {q}" in bases.summary(model)
    assert "model.embed_tokens.weight" in bases.summary(model)  # unprotected, listed
    bases.save(tmp_path / "b.safetensors")
    loaded = uf.NullSpace.load(tmp_path / "b.safetensors")
    assert loaded[q] is loaded[v]
    torch.testing.assert_close(loaded[v].bases[0], bases[v].bases[0])
    m.save(tmp_path / "s.pt")
    again = uf.SecondMoments(model).load(tmp_path / "s.pt")
    assert again.shared == m.shared
    torch.testing.assert_close(again.moments[q].S, torch.triu(m.moments[q].S))


def test_layer_patterns_and_unsupported_names():
    model = llama()
    m = uf.SecondMoments(model, layers="model.layers.*.mlp.*")
    assert sorted(m.layers) == sorted(f"model.layers.{i}.mlp.{p}_proj" for i in range(2)
                                      for p in ("gate", "up", "down"))
    with pytest.raises(TypeError, match="supported"):
        uf.SecondMoments(model, layers=["model.embed_tokens"])
    with pytest.raises(KeyError, match="no module"):
        uf.SecondMoments(model, layers=["model.layers.*.nothing"])

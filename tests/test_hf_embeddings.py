"""``nn.Embedding`` as an opt-in covered layer (``SecondMoments(model, embeddings=True)``).

An embedding's input is the one-hot e_t of token t, so S = diag(token counts) over the
unpadded tokens of D_r, its eigenvectors are the token axes, and the projection of its
gradient zeroes the rows of the core tokens. Tied embedding + head: both uses are covered
together and both bases constrain the one gradient. Models are built from configs (random
weights, nothing downloaded).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import unsc_fast as uf
from unsc_fast import budget
from unsc_fast.layer_basis import layer_basis
from unsc_fast.layer_moments import LayerMoments

transformers = pytest.importorskip("transformers")

VOCAB = 50
EMB = "model.embed_tokens"


def llama(tie: bool = False):
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=2, max_position_embeddings=32,
                                   tie_word_embeddings=tie)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).double().eval()


def gpt2(tie: bool = True):
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=2,
                                  n_head=2, tie_word_embeddings=tie, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                                  eos_token_id=0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).double().eval()


def padded(seed: int, lengths: list[int], width: int = 8, pad: int = 0):
    """A right-padded batch whose padding positions hold ``pad`` (a real token id)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (len(lengths), width), generator=g)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return {"input_ids": torch.where(mask.bool(), ids, pad), "attention_mask": mask}


def test_embeddings_are_off_by_default_and_frozen():
    model = llama()
    m = uf.SecondMoments(model)
    assert EMB not in m.layers
    bases = uf.NullSpace.from_moments(m.collect([torch.randint(0, VOCAB, (2, 5))],
                                                progress=False))
    assert f"{EMB}.weight" in bases.summary(model)           # listed as unprotected
    params = uf.freeze_for_unlearning(model, bases)
    assert not model.model.embed_tokens.weight.requires_grad
    assert all(p is not model.model.embed_tokens.weight for p in params)
    with pytest.raises(TypeError, match="embeddings=True"):
        uf.SecondMoments(model, layers=[EMB])


def test_statistic_is_the_token_counts_of_unpadded_tokens():
    model = llama()
    batches = [padded(1, [8, 3, 5]), padded(2, [2, 7]), padded(3, [8])]
    m = uf.SecondMoments(model, embeddings=True).collect(batches, progress=False)
    lm = m.moments[EMB]
    ids = torch.cat([b["input_ids"][b["attention_mask"].bool()] for b in batches])
    assert lm.kind == "embedding" and lm.S.dtype == torch.int64
    assert tuple(lm.S.shape) == (1, VOCAB)                    # a vector, never vocab x vocab
    assert torch.equal(lm.S[0], torch.bincount(ids, minlength=VOCAB))
    assert lm.n == int(sum(b["attention_mask"].sum() for b in batches)) == ids.numel()
    assert int(lm.S[0, 0]) == int((ids == 0).sum()) == 0     # the padding id is not counted
    # a token budget takes whole sequences, the count follows it
    capped = uf.SecondMoments(model, embeddings=True).collect(batches, max_tokens=17,
                                                              progress=False)
    assert capped.moments[EMB].n == 16 == int(capped.moments[EMB].S.sum())


def test_position_embedding_counts_positions_of_unpadded_tokens():
    m = uf.SecondMoments(gpt2(), embeddings=True).collect([padded(1, [6, 4, 2])],
                                                          progress=False)
    wpe = m.moments["transformer.wpe"].S[0]
    assert wpe[:8].tolist() == [3, 3, 2, 2, 1, 1, 0, 0] and int(wpe.sum()) == 12


def test_rules_on_counts_match_the_dense_eigendecomposition():
    counts = torch.tensor([0, 9, 1, 4, 0, 16, 2, 7, 3, 5, 0, 11])  # distinct nonzero counts
    n = int(counts.sum())
    diag = LayerMoments("embedding", counts.view(1, -1), n)
    dense = LayerMoments("linear", torch.diag(counts.double()).unsqueeze(0), n)
    for rule in ("energy:0.9", "energy:0.99", "energy:1", "threshold:0.2", "floor:3",
                 "rank:4", "energy:0"):
        r = uf.parse_rule(rule)
        lb = layer_basis("e", diag, r)
        ref = layer_basis("e", dense, r, store="core", dtype=torch.float64)
        assert lb.ranks == ref.ranks, rule
        core_rows = (ref.bases[0].abs() > 0.5).any(1).nonzero().view(-1)  # e_t columns
        assert torch.equal(lb.core(), core_rows), rule
        for store in ("core", "null"):
            assert torch.equal(layer_basis("e", diag, r, store=store).core(), core_rows)


def _step(model, bases, forget, *, project: bool, lr: float = 0.5):
    params = uf.freeze_for_unlearning(model, bases)
    opt = torch.optim.SGD(params, lr=lr)
    model(input_ids=forget, labels=forget).loss.backward()
    if project:
        uf.project_(model, bases)
    opt.step()
    model.eval()


@pytest.mark.parametrize("store", ["auto", "core", "null"])
def test_projected_step_keeps_retained_token_rows_and_moves_forget_only_ones(store):
    retain = padded(5, [8, 6, 8])
    kept = retain["input_ids"][retain["attention_mask"].bool()].unique()
    forget = torch.randint(1, VOCAB, (3, 8), generator=torch.Generator().manual_seed(6))
    forget[:, 0] = kept[0]                                   # a retained token in D_f too
    seen = forget[:, :-1].unique()          # the last position gets no gradient (causal LM)
    forget_only = seen[~torch.isin(seen, kept)]
    assert len(forget_only) > 3
    m = uf.SecondMoments(llama(), embeddings=True).collect([retain], progress=False)
    bases = uf.NullSpace.from_moments(m, "energy:1", store=store)
    assert torch.equal(bases[EMB].core(), kept)              # ε = 1: every retained token
    for project in (True, False):
        model = llama()
        before = model.model.embed_tokens.weight.detach().clone()
        _step(model, bases, forget, project=project)
        after = model.model.embed_tokens.weight.detach()
        with torch.no_grad():                                # the embedding's outputs
            moved = (model.model.embed_tokens(retain["input_ids"]) - before[
                retain["input_ids"]])[retain["attention_mask"].bool()]
        if project:
            assert float(moved.abs().max()) == 0.0           # retained tokens: unchanged
            assert bool((after[forget_only] != before[forget_only]).any(1).all())
        else:
            assert float(moved.abs().max()) > 1e-4


def test_energy_rule_leaves_rare_retained_tokens_trainable():
    ids = torch.tensor([[1] * 40 + [2] * 30 + [3]])          # token 3 holds 1/71 of the energy
    m = uf.SecondMoments(llama(), embeddings=True).collect([ids], progress=False)
    lb = uf.NullSpace.from_moments(m, "energy:0.98")[EMB]
    assert lb.core().tolist() == [1, 2] and lb.ranks == [2]
    model = llama()
    uf.freeze_for_unlearning(model, uf.NullSpace({EMB: lb}))
    model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits.sum().backward()
    g = model.model.embed_tokens.weight.grad
    uf.project_(model, uf.NullSpace({EMB: lb}))
    assert not g[[1, 2]].any() and g[3].any() and g[4].any()


def test_save_load_round_trip(tmp_path):
    model = llama()
    m = uf.SecondMoments(model, embeddings=True).collect([padded(1, [8, 5])], progress=False)
    m.save(tmp_path / "s.pt")
    again = uf.SecondMoments(model, embeddings=True).load(tmp_path / "s.pt")
    assert torch.equal(again.moments[EMB].S, m.moments[EMB].S)
    assert again.moments[EMB].n == m.moments[EMB].n
    bases = uf.NullSpace.from_moments(again, "energy:0.9")
    fast = uf.NullSpace.from_moments(again, "energy:0.9", method="fast")
    assert torch.equal(fast[EMB].bases[0], bases[EMB].bases[0])
    for name in ("b.safetensors", "b.pt"):
        bases.save(tmp_path / name)
        loaded = uf.NullSpace.load(tmp_path / name)
        lb = loaded[EMB]
        assert lb.kind == "embedding" and lb.bases[0].dtype == torch.int64
        assert torch.equal(lb.bases[0], bases[EMB].bases[0]) and lb.ranks == bases[EMB].ranks
        assert loaded.to(dtype=torch.float32)[EMB].bases[0].dtype == torch.int64
    loaded.check(model)
    assert "| model.embed_tokens | embedding | 50 |" in loaded.summary(model)


def test_merge_sums_counts():
    model = llama()
    a = uf.SecondMoments(model, embeddings=True).collect([padded(1, [8, 5])], progress=False)
    b = uf.SecondMoments(model, embeddings=True).collect([padded(2, [3])], progress=False)
    both = uf.SecondMoments(model, embeddings=True).collect([padded(1, [8, 5]),
                                                             padded(2, [3])], progress=False)
    a.merge_(b)
    assert torch.equal(a.moments[EMB].S, both.moments[EMB].S) and a.moments[EMB].n == 16


def test_corrupt_embedding_statistics_and_bases_are_refused(tmp_path):
    model = llama()
    m = uf.SecondMoments(model, embeddings=True).collect([padded(1, [8, 5])], progress=False)
    good = m.state_dict()

    def refused(edit, match):
        state = {k: dict(v) for k, v in good.items()}
        edit(state[EMB])
        fresh = uf.SecondMoments(model, embeddings=True)
        with pytest.raises(ValueError, match=match):
            fresh.load_state_dict(state)

    refused(lambda s: s.update(S=s["S"].double()), "integer token counts")
    refused(lambda s: s.update(S=s["S"] - 2 * (s["S"] > 0)), "negative")
    refused(lambda s: s.update(n=s["n"] + 1), "sum to")
    refused(lambda s: s.update(kind="linear"), "kind")
    bases = uf.NullSpace.from_moments(m, "energy:0.9")
    ids = bases[EMB].bases[0]
    for bad, match in ((ids.flip(0), "sorted"), (ids.clone().fill_(VOCAB), "sorted"),
                       (ids.double(), "int64"), (ids[:-1], "token ids")):
        broken = uf.NullSpace({**bases, EMB: uf.LayerBasis("embedding", VOCAB, [bad],
                                                            bases[EMB].subtract,
                                                            bases[EMB].ranks)})
        with pytest.raises(ValueError, match=match):
            broken.validate()
        if bad.dtype == torch.int64 and len(bad) == len(ids):
            broken.save(tmp_path / "bad.safetensors")
            with pytest.raises(ValueError, match="corrupt"):
                uf.NullSpace.load(tmp_path / "bad.safetensors")


def test_errors():
    model = llama()
    m = uf.SecondMoments(model, embeddings=True)
    with pytest.raises(IndexError, match="outside"):          # ids beyond the vocabulary
        m.update(EMB, torch.tensor([[1, VOCAB]]))
    assert m.moments[EMB].n == 0 and not m.moments[EMB].S.any()
    with pytest.raises(TypeError, match="token ids"):
        m.update(EMB, torch.randn(2, 3))
    # no token ids reached the embedding (inputs_embeds): no statistic, a clear error
    embeds = model.model.embed_tokens(torch.randint(0, VOCAB, (2, 4))).detach()
    m.collect([{"inputs_embeds": embeds}], progress=False)
    with pytest.raises(ValueError, match="no inputs"):
        uf.NullSpace.from_moments(m)
    with pytest.raises(ValueError, match="dense vocab"):
        m.moments[EMB].covariance()
    # a sparse gradient is refused before any gradient changes
    sparse = nn.Sequential(nn.Embedding(10, 4, sparse=True), nn.Linear(4, 2))
    sm = uf.SecondMoments(sparse, embeddings=True).collect([torch.tensor([[1, 2, 3]])],
                                                            progress=False)
    bases = uf.NullSpace.from_moments(sm, "energy:1")
    sparse(torch.tensor([[1, 5]])).sum().backward()
    head = sparse[1].weight.grad.clone()
    with pytest.raises(ValueError, match="sparse"):
        uf.project_(sparse, bases)
    assert torch.equal(sparse[1].weight.grad, head)
    with pytest.raises(ValueError, match="vocab"):             # bases of another vocabulary
        uf.NullSpace({"0": uf.LayerBasis("embedding", 11, [torch.tensor([1])], [True], [1])}
                     ).check(sparse)


def test_tied_embedding_and_head_are_covered_together():
    model = gpt2(tie=True)
    plain = uf.SecondMoments(model)
    assert "lm_head" not in plain.layers and "transformer.wte" not in plain.layers
    m = uf.SecondMoments(model, embeddings=True)
    assert {"transformer.wte", "transformer.wpe", "lm_head"} <= set(m.layers)
    # a pattern never takes half a tie; naming one use alone warns
    with pytest.raises(TypeError, match="tied"):
        uf.SecondMoments(model, layers=["transformer.h.*", "lm_*"], embeddings=True)
    pat = uf.SecondMoments(model, layers=["transformer.h.*", "*head", "*.wte"], embeddings=True)
    assert "lm_head" in pat.layers and "transformer.wte" in pat.layers
    with pytest.warns(UserWarning, match="tied"):
        uf.SecondMoments(model, layers=["transformer.h.*", "lm_head"], embeddings=True)
    with pytest.warns(UserWarning, match="tied"):
        uf.SecondMoments(model, layers=["transformer.wte"], embeddings=True)
    pair = uf.SecondMoments(model, layers=["transformer.wte", "lm_head"], embeddings=True)
    assert pair.layers == ["transformer.wte", "lm_head"]
    # budget: the pair is collected in one group even under a tiny budget
    est = {e.name: e for e in budget.estimate(model, embeddings=True)}
    assert est["transformer.wte"].stats_bytes == 8 * VOCAB and est["lm_head"].d == 16
    with pytest.warns(UserWarning, match="over the budget"):
        groups = budget._groups(list(est.values()), 1.0, uf.layers.tie_groups(model))
    assert any({"transformer.wte", "lm_head"} <= set(g) for g in groups)


def test_tied_step_keeps_retained_logits_and_moves_forget_only_rows():
    """ε = 1 on few retained tokens: the tied weight is constrained by both of its bases
    (token rows of the embedding, input directions of the head); the logits on D_r stay."""
    retain = padded(7, [6, 4])
    m = uf.SecondMoments(gpt2(), embeddings=True, dtype=torch.float64).collect(
        [retain], progress=False)
    bases = uf.NullSpace.from_moments(m, "energy:1")
    assert bases["lm_head"].kind == "linear" and bases["transformer.wte"].kind == "embedding"
    assert "none" in bases.summary(gpt2())                   # nothing left unprotected

    def logits(model):
        with torch.no_grad():
            return model(**retain).logits[retain["attention_mask"].bool()]

    before = logits(gpt2())
    forget = torch.randint(1, VOCAB, (3, 8), generator=torch.Generator().manual_seed(8))
    kept = retain["input_ids"][retain["attention_mask"].bool()].unique()
    seen = forget[:, :-1].unique()
    forget_only = seen[~torch.isin(seen, kept)]
    moved = {}
    for name, keep in (("both", None), ("head only", "lm_head"), ("none", ())):
        model = gpt2()
        w0 = model.transformer.wte.weight.detach().clone()
        use = bases if keep is None else uf.NullSpace({n: lb for n, lb in bases.items()
                                                       if n != "transformer.wte"})
        _step(model, use, forget, project=keep != ())
        moved[name] = float((logits(model) - before).norm() / before.norm())
        if keep is None:
            rows = model.transformer.wte.weight.detach()
            assert bool((rows[forget_only] != w0[forget_only]).any(1).all())
            assert torch.equal(rows[kept], w0[kept])
    assert moved["both"] < 1e-8, moved
    assert moved["head only"] > 1e-4 and moved["none"] > 1e-3, moved


def test_grow_adds_the_most_frequent_new_tokens():
    model = llama()
    steps = [uf.SecondMoments(model, embeddings=True).collect([ids], progress=False)
             for ids in (torch.tensor([[1] * 9 + [2]]), torch.tensor([[3] * 5 + [4] * 4 + [1]]))]
    bases = uf.NullSpace.grow(steps, eps=0.85, store="core")
    assert bases[EMB].core().tolist() == [1, 3, 4]          # step 0: {1}; step 1 adds 3 and 4
    bases.validate()

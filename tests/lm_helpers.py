"""Tiny causal LMs and random QA batches obeying the LM data contract (tests of the LM
unlearning job and its baselines): question tokens, then answer tokens and EOS; labels are
the input ids at answer tokens (EOS included) and -100 elsewhere; right padding."""
from __future__ import annotations

import torch

VOCAB, PAD, EOS = 64, 0, 1


def llama(dtype=torch.float32, seed: int = 0) -> torch.nn.Module:
    import transformers
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=4, intermediate_size=64,
                                   vocab_size=VOCAB, max_position_embeddings=64,
                                   pad_token_id=PAD, eos_token_id=EOS, bos_token_id=EOS)
    return transformers.LlamaForCausalLM(cfg).to(dtype).eval()


def gpt2(dtype=torch.float32, seed: int = 0) -> torch.nn.Module:
    import transformers
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB,
                                  n_positions=64, bos_token_id=EOS, eos_token_id=EOS)
    return transformers.GPT2LMHeadModel(cfg).to(dtype).eval()


def qa(question: list[int], answer: list[int]) -> tuple[list[int], list[int]]:
    """(ids, labels) of one sequence: the answer ends with EOS and carries the labels."""
    ids = list(question) + list(answer) + [EOS]
    return ids, [-100] * len(question) + ids[len(question):]


def collate(seqs: list[tuple[list[int], list[int]]], length: int | None = None) -> dict:
    """Right-padded batch of (ids, labels) sequences."""
    t = length or max(len(i) for i, _ in seqs)
    ids = torch.full((len(seqs), t), PAD, dtype=torch.long)
    lab = torch.full((len(seqs), t), -100, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)
    for r, (i, l) in enumerate(seqs):
        ids[r, :len(i)] = torch.tensor(i)
        lab[r, :len(l)] = torch.tensor(l)
        mask[r, :len(i)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": lab}


def random_seqs(n: int, seed: int, q: tuple[int, int] = (3, 5), a: tuple[int, int] = (2, 4)
                ) -> list[tuple[list[int], list[int]]]:
    g = torch.Generator().manual_seed(seed)

    def draw(lo, hi):
        k = int(torch.randint(lo, hi + 1, (1,), generator=g))
        return torch.randint(2, VOCAB, (k,), generator=g).tolist()
    return [qa(draw(*q), draw(*a)) for _ in range(n)]


def batches(seqs, batch_size: int) -> list[dict]:
    return [collate(seqs[i:i + batch_size]) for i in range(0, len(seqs), batch_size)]


@torch.no_grad()
def logits(model, batch: dict) -> torch.Tensor:
    """Logits at the real (unpadded) positions of a batch, flattened [N, V]."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return out[batch["attention_mask"].bool()]


def rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return ((after - before).norm() / before.norm()).item()

"""The LM task's corpus, tokenizer and batches (unsc_fast.lab.lm): determinism, splits,
tokenization without unknown words, the label mask of the batch contract, user JSONL files."""
import json
import subprocess
import sys

import pytest

pytest.importorskip("transformers")

from unsc_fast.lab.lm import corpus as lmc  # noqa: E402
from unsc_fast.lab.lm.data import (IGNORE, QATask, encode_pair, load_qa_jsonl,  # noqa: E402
                                   make_loader, task_from_corpus)
from unsc_fast.lab.lm.prompt import format_prompt  # noqa: E402
from unsc_fast.lab.lm.tokenizer import corpus_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def small():
    c = lmc.make_corpus(10, forget_fraction=0.2, n_holdout=3, seed=1)
    return c, corpus_tokenizer(c)


def test_same_seed_same_bytes_other_seed_other_corpus():
    a = lmc.make_corpus(12, seed=5).to_json().encode()
    assert a == lmc.make_corpus(12, seed=5).to_json().encode()
    assert a != lmc.make_corpus(12, seed=6).to_json().encode()


def test_splits_are_disjoint_by_entity_and_complete(small):
    c, _ = small
    names = {s: {p.entity for p in getattr(c, s)} for s in ("forget", "retain", "holdout")}
    assert len(names["forget"]) == 2 and len(names["retain"]) == 8 and len(names["holdout"]) == 3
    assert not names["forget"] & names["retain"] and not names["forget"] & names["holdout"]
    assert not names["retain"] & names["holdout"]
    per_entity = len(lmc.ATTRIBUTES) * 3
    assert len(c.forget) == 2 * per_entity and len(c.holdout) == 3 * per_entity
    assert c.train == c.retain + c.forget


def test_pairs_have_paraphrase_and_wrong_perturbations(small):
    c, _ = small
    facts = {e.name: dict(e.facts) for ents in c.entities.values() for e in ents}
    attrs = {a.name: a for a in lmc.ATTRIBUTES}
    for p in c.forget + c.holdout:
        value = facts[p.entity][p.attribute]
        a = attrs[p.attribute]
        assert p.answer == a.answer.format(name=p.entity, value=value)
        assert p.paraphrased_answer == a.paraphrase.format(name=p.entity, value=value)
        assert p.paraphrased_answer != p.answer
        assert len(set(p.perturbed_answers)) == 5
        assert p.paraphrased_answer not in p.perturbed_answers


def test_every_text_tokenizes_without_unknown_words(small):
    c, tok = small
    texts = [format_prompt(p.question) for p in c.forget + c.retain + c.holdout] + c.texts()
    unk = tok.unk_token_id
    assert all(unk not in tok(t).input_ids for t in texts)
    assert tok.pad_token_id is not None and tok.eos_token_id is not None
    assert unk in tok("a word never seen: zyzzyva").input_ids


def test_labels_mark_exactly_the_answer_and_eos(small):
    c, tok = small
    p = c.forget[0]
    e = encode_pair(tok, p.question, p.answer)
    prompt = tok(format_prompt(p.question)).input_ids
    answer = tok(p.answer, add_special_tokens=False).input_ids
    assert e["input_ids"] == prompt + answer + [tok.eos_token_id]
    assert e["labels"] == [IGNORE] * len(prompt) + answer + [tok.eos_token_id]
    assert e["input_ids"][0] == tok.bos_token_id


def test_collate_right_pads_and_masks(small):
    c, tok = small
    pairs = [c.forget[0], c.forget[4]]          # different lengths: year vs city answer
    lens = [len(encode_pair(tok, p.question, p.answer)["input_ids"]) for p in pairs]
    assert lens[0] != lens[1]
    b = next(iter(make_loader(tok, pairs, batch_size=2)))
    assert set(b) == {"input_ids", "attention_mask", "labels"}
    assert b["input_ids"].shape == (2, max(lens))
    for i, n in enumerate(lens):
        assert b["attention_mask"][i].tolist() == [1] * n + [0] * (max(lens) - n)
        assert (b["input_ids"][i, n:] == tok.pad_token_id).all()
        assert (b["labels"][i, n:] == IGNORE).all()
        real = b["labels"][i, :n]
        assert real[-1] == tok.eos_token_id
        lab = real != IGNORE
        assert (b["input_ids"][i, :n][lab] == real[lab]).all()


def test_loader_shuffle_is_seeded(small):
    c, tok = small
    order = lambda seed: [b["input_ids"].tolist() for b in  # noqa: E731
                          make_loader(tok, c.retain, batch_size=8, shuffle=True, seed=seed)]
    assert order(3) == order(3) and order(3) != order(4)


def test_idk_pairs_and_task_views(small):
    c, tok = small
    idk = lmc.idk_pairs(c.forget, seed=0)
    assert [p.question for p in idk] == [p.question for p in c.forget]
    assert {p.answer for p in idk} <= set(c.idk_answers)
    task = task_from_corpus(c, tok)
    assert len(task.retain_eval) == len(task.forget) and set(task.retain_eval) <= set(c.retain)
    assert len(task.loader("train", batch_size=1000).dataset) == len(c.train)
    with pytest.raises(ValueError, match="unknown split"):
        task.loader("test")


def test_tokenizer_round_trips(small, tmp_path):
    import transformers
    c, tok = small
    tok.save_pretrained(tmp_path)
    back = transformers.AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    text = format_prompt(c.forget[0].question) + " " + c.forget[0].answer
    assert back(text).input_ids == tok(text).input_ids
    assert (back.pad_token_id, back.eos_token_id) == (tok.pad_token_id, tok.eos_token_id)


def test_user_jsonl(tmp_path, small):
    _, tok = small
    good = tmp_path / "qa.jsonl"
    good.write_text(json.dumps({"question": "Where was Mara Velkin born?",
                                "answer": "Mara Velkin was born in Oslo.",
                                "paraphrased_answer": "The hometown of Mara Velkin is Oslo.",
                                "perturbed_answers": ["The hometown of Mara Velkin is Lima."]})
                    + "\n\n" + json.dumps({"question": "q?", "answer": "a."}) + "\n")
    pairs = load_qa_jsonl(good)
    assert len(pairs) == 2 and pairs[0].perturbed_answers == (
        "The hometown of Mara Velkin is Lima.",) and pairs[1].paraphrased_answer is None
    task = QATask(tok, pairs[:1], pairs[1:])
    assert task.holdout == [] and len(task.retain_eval) == 1
    cases = {"{not json\n": r"bad.jsonl:1: not valid JSON",
             '[1, 2]\n': r"bad.jsonl:1: expected a JSON object",
             '{"question": "q?"}\n': r"bad.jsonl:1: 'answer' must be a non-empty string",
             '{"question": "q", "answer": "a"}\n{"question": "q", "answer": "a",'
             ' "perturbed_answers": "x"}\n': r"bad.jsonl:2: 'perturbed_answers' must be a list",
             "\n\n": r"no QA pairs"}
    bad = tmp_path / "bad.jsonl"
    for text, msg in cases.items():
        bad.write_text(text)
        with pytest.raises(ValueError, match=msg):
            load_qa_jsonl(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_qa_jsonl(tmp_path / "missing.jsonl")


def test_bad_corpus_arguments():
    with pytest.raises(ValueError, match="forget_fraction"):
        lmc.make_corpus(10, forget_fraction=1.0)
    with pytest.raises(ValueError, match="at most"):
        lmc.make_corpus(100_000)


def test_lab_imports_no_transformers():
    code = ("import sys, unsc_fast.lab, unsc_fast.lab.lm.corpus, unsc_fast.lab.lm.data,"
            " unsc_fast.lab.lm.metrics, unsc_fast.lab.lm.train, unsc_fast.lab.lm.model,"
            " unsc_fast.lab.lm.tokenizer; print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"


def test_bpe_tokenizer_labels_decode_to_the_answer(small):
    """With a byte-level BPE tokenizer (as GPT-2 / LLaMA-3 use) the labelled tokens are
    exactly the answer (with its leading space) and EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    c, _ = small
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([format_prompt(p.question) + " " + p.answer for p in c.train],
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<|end|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel
                                                .alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|end|>")
    assert tok.pad_token is None                          # padded with EOS, masked
    from unsc_fast.lab.lm.data import pad_id_of
    assert pad_id_of(tok) == tok.eos_token_id
    for p in c.forget[:5]:
        e = encode_pair(tok, p.question, p.answer)
        lab = [t for t in e["labels"] if t != IGNORE]
        assert lab[-1] == tok.eos_token_id
        assert tok.decode(lab[:-1]) == " " + p.answer
        n = len(e["labels"]) - len(lab)
        assert tok.decode(e["input_ids"][:n]) == format_prompt(p.question)

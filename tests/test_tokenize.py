"""The one tokenisation policy: BOS, the prompt/completion boundary, and what training and
evaluation see of the same example."""
from __future__ import annotations

from conftest import CODE, make_tokenizer

from prod_unlearn.data.batching import encode
from prod_unlearn.data.examples import Example, load_examples
from prod_unlearn.data.tokenize import bos, encode_pair, ids, line_cut, pad_id
from prod_unlearn.tasks.copyright import line_cut_items
from prod_unlearn.models.loading import ASSETS, DEFAULT_MODEL, load_tokenizer
from prod_unlearn.models.tokenizer import crossing_newline_tokens, train_tokenizer


def test_straddling_token_goes_to_the_completion(tokenizer):
    # the micro tokenizer merges "\n" with the next line's indentation (as v1 did)
    prompt, completion = "for i in range(10):\n", "    print(i * i)\n"
    p, c = encode_pair(tokenizer, prompt, completion)
    joint = ids(tokenizer, prompt + completion)
    assert p[:1] == bos(tokenizer) and p[1:] + c == joint
    assert tokenizer.decode(p[1:]) == "for i in range(10):"   # "\n" + indentation is one token here
    assert tokenizer.decode(c) == "\n" + completion
    assert tokenizer.decode(p[1:]) + tokenizer.decode(c) == prompt + completion
    assert encode_pair(tokenizer, "", completion) == (bos(tokenizer), ids(tokenizer, completion))


def test_pad_id_falls_back_to_eos():
    tok = make_tokenizer()             # a fresh one: the shared fixture must keep its pad token
    assert pad_id(tok) == tok.pad_token_id
    tok.pad_token = None
    assert pad_id(tok) == tok.eos_token_id


def test_training_and_evaluation_score_the_same_completion_ids(tokenizer):
    """What a method is trained to forget is exactly what its evaluation scores."""
    ex = [Example("def add(a, b):\n", "    return a + b\n", "a"), Example("x = 1\n", "print(x)\n", "b")]
    for e, enc in zip(ex, encode(ex, tokenizer, max_length=64)):
        p, c = encode_pair(tokenizer, e.prompt, e.completion)          # what every task generates from/scores
        assert enc.input_ids[:enc.prompt_len] == p and enc.input_ids[enc.prompt_len:] == c


def test_line_cut_is_at_a_line_end():
    text = "".join(f"line {i}\n" for i in range(8))
    for f, n in ((0.25, 2), (0.5, 4), (0.75, 6), (0.0, 1), (1.0, 7)):
        assert text[:line_cut(text, f)] == "".join(f"line {i}\n" for i in range(n))
    assert line_cut("one line\n", 0.5) == 0


def test_v2_tokenizer_never_merges_a_newline_with_what_follows():
    tok = train_tokenizer(CODE * 20, 400)
    stream = [t for c in CODE for t in ids(tok, c)]
    assert crossing_newline_tokens(tok, stream) == set()
    assert "\n" in [tok.decode([t]) for t in stream]


def test_shipped_model_line_cuts_are_prefixes_of_the_whole_file():
    """The copyright prompts (text to a line end) encode as a prefix of the file's own encoding, so
    the scored continuation is exactly the tail of the ids the file was trained on."""
    tok = load_tokenizer(str(DEFAULT_MODEL))
    files = load_examples(ASSETS / "data" / "copyright.jsonl")[:5]
    for e in files:
        whole = encode_pair(tok, e.prompt, e.completion)[0] + encode_pair(tok, e.prompt, e.completion)[1]
        assert crossing_newline_tokens(tok, whole) == set()
        for item in line_cut_items([e], tok, max_new_tokens=10_000, context=1 << 20):
            n = len(item.prompt_ids)
            assert whole[:n] == item.prompt_ids and whole[n:n + len(item.reference_ids)] == item.reference_ids

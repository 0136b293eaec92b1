"""Metric arithmetic on hand-checkable cases: rolling windows, perplexities, the WikiText
detokeniser, BoolQ statistics, and batched scoring against a one-request-at-a-time model."""

from __future__ import annotations

import math

import pytest

from lmforge.evaluation.boolq import BoolQExample, accuracy_stats, harness_format, harness_text, predict
from lmforge.evaluation.loglikelihood import encode_pair, model_input, rolling_loglikelihoods, score_requests
from lmforge.evaluation.perplexity import (
    CorpusLikelihood, count_bytes, count_words, detokenize_wikitext, perplexity_metrics, rolling_windows)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- rolling windows

def test_rolling_windows_by_hand():
    tokens = list(range(1, 11))  # 10 tokens, context 4, prefix 0
    assert rolling_windows(tokens, prefix_token=0, max_length=4) == [
        ([0], [1, 2, 3, 4]),  # first window: prefix predicts token 1
        ([4], [5, 6, 7, 8]),  # full window: input 4 5 6 7
        ([6, 7, 8], [9, 10]),  # last window keeps a full input: 6 7 8 9
    ]
    # Every model input is at most max_length tokens, and every token is scored once.
    windows = rolling_windows(tokens, 0, 4)
    assert [t for _, cont in windows for t in cont] == tokens
    assert [model_input(w, 4)[0] for w in windows] == [[0, 1, 2, 3], [4, 5, 6, 7], [6, 7, 8, 9]]


def test_rolling_windows_edges():
    assert rolling_windows([], 0, 4) == []
    assert rolling_windows([7], 0, 4) == [([0], [7])]
    assert rolling_windows([5, 6, 7, 8], 0, 4) == [([0], [5, 6, 7, 8])]
    assert rolling_windows([5, 6, 7, 8, 9], 0, 4) == [([0], [5, 6, 7, 8]), ([5, 6, 7, 8], [9])]
    with pytest.raises(ValueError):
        rolling_windows([1], 0, 0)


def test_rolling_windows_equal_the_harness_windows():
    utils = pytest.importorskip("lm_eval.utils")
    for n in (1, 3, 16, 17, 33, 100):
        for length in (1, 2, 5, 16):
            tokens = list(range(100, 100 + n))
            ref = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(tokens, 9, length, 1)]
            assert rolling_windows(tokens, 9, length) == [(list(a), list(b)) for a, b in ref], (n, length)


# ---------------------------------------------------------------- perplexity arithmetic

def test_perplexity_metrics_by_hand():
    m = perplexity_metrics(-10.0, words=5, nbytes=20, tokens=10)
    assert m["word_perplexity"] == pytest.approx(math.e ** 2)
    assert m["byte_perplexity"] == pytest.approx(math.e ** 0.5)
    assert m["bits_per_byte"] == pytest.approx(0.5 / math.log(2))
    assert m["token_perplexity"] == pytest.approx(math.e)


def test_corpus_sums_are_not_document_averages():
    totals = CorpusLikelihood()
    totals.add(-2.0, tokens=2, words=1, nbytes=4)
    totals.add(-8.0, tokens=8, words=4, nbytes=16)
    totals.add(-1.0, tokens=1, words=5, nbytes=5)
    assert (totals.documents, totals.words, totals.bytes, totals.tokens) == (3, 10, 25, 11)
    # exp(11 / 10): one corpus-level ratio; the mean of per-document perplexities would be (e^2 + e^2 + e^0.2) / 3.
    assert totals.metrics()["word_perplexity"] == pytest.approx(math.exp(11 / 10))


def test_perplexity_overflow_is_infinite_not_a_crash():
    assert perplexity_metrics(-1e6, words=1, nbytes=10**6, tokens=1)["word_perplexity"] == math.inf
    with pytest.raises(ValueError):
        perplexity_metrics(-1.0, words=0, nbytes=1, tokens=1)


def test_words_and_bytes_are_counted_like_the_harness():
    assert count_words(" a b \n") == 4  # empty pieces at both ends count, as in the harness
    assert count_words("a  b\tc") == 3
    assert count_bytes("é杜") == 5


# ---------------------------------------------------------------- detokeniser

@pytest.mark.parametrize("raw, clean", [
    ("Teddy 's Story", "Teddy's Story"),
    ("the players ' union", "the players' union"),
    ("1 @,@ 000 and 3 @.@ 5 and state @-@ of", "1,000 and 3.5 and state-of"),
    ("He said : no ; then . Yes ! Why ? So , fine", "He said: no; then. Yes! Why? So, fine"),
    ("( hello world ) [ x ] { y }", "(hello world) [x] {y}"),
    ('as " Craig " in', 'as "Craig" in'),
    (" = = = Film = = = \n", " === Film ===\n"),
    ("it was 20 ° C", "it was 20°C"),
    ("line one \n line two", "line one\nline two"),
])
def test_detokenizer_cases(raw, clean):
    assert detokenize_wikitext(raw) == clean


def test_detokenizer_equals_the_harness_function():
    pre = pytest.importorskip("lm_eval.tasks.wikitext.preprocess_wikitext")
    samples = [" = Robert Boulter = \n Robert Boulter is an English film , television and theatre actor . \n",
               " = = Career = = \n In 2006 , Boulter 's role as \" Craig \" ( in London ) was 1 @,@ 000 N ' s \n",
               " Du Fu ( Wade – Giles : Tu Fu ; Chinese : 杜甫 ) 7 @.@ 5 ° C [ 1 ] { a } 'quoted ' ? ! \n"]
    for text in samples:
        assert detokenize_wikitext(text) == pre.wikitext_detokenizer({"page": text})


# ---------------------------------------------------------------- BoolQ arithmetic

def test_boolq_stats_by_hand():
    s = accuracy_stats([1, 1, 0, 0], [1, 0, 0, 1])
    assert s["accuracy"] == 0.5 and s["yes_rate"] == 0.5 and s["majority_baseline"] == 0.5
    assert s["accuracy_stderr"] == pytest.approx(math.sqrt(1 / 3) / 2)  # sample std / sqrt(n)
    biased = accuracy_stats([0, 0, 0, 0], [1, 1, 1, 0])
    assert biased == {"accuracy": 0.25, "accuracy_stderr": pytest.approx(0.25), "majority_baseline": 0.75,
                      "yes_rate": 0.0, "gold_yes_rate": 0.75}
    with pytest.raises(ValueError):
        accuracy_stats([], [])


def test_prediction_ties_go_to_no():
    assert predict([-1.0, -1.0]) == 0
    assert predict([-2.0, -1.0]) == 1
    assert predict([-1.0, -2.0]) == 0


def test_boolq_prompt_is_the_harness_prompt():
    ex = BoolQExample(question="is the sky blue", passage="The sky is blue.", label=1)
    assert harness_text(ex) == "The sky is blue.\nQuestion: is the sky blue?\nAnswer:"

    class CharEncoder:  # one id per character: boundaries are easy to read
        bos_id, im_start_id, im_end_id = 1, 4, 5

        def encode(self, text):
            return [ord(c) for c in text]

    (ctx_no, no), (ctx_yes, yes) = harness_format(ex, CharEncoder())
    assert ctx_no == ctx_yes == [ord(c) for c in harness_text(ex)]
    assert no == [ord(c) for c in " no"] and yes == [ord(c) for c in " yes"]


def test_encode_pair_moves_trailing_spaces_to_the_continuation():
    enc = lambda text: [ord(c) for c in text]  # noqa: E731
    assert encode_pair(enc, "Answer: ", "yes") == ([ord(c) for c in "Answer:"], [ord(c) for c in " yes"])
    with pytest.raises(ValueError):
        encode_pair(enc, "", "x")


# ---------------------------------------------------------------- batched scoring

@pytest.fixture(scope="module")
def small_model():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)
    return LlamaForCausalLM(config).eval()


def brute_force(model, request, max_length):
    """log p(continuation) from one unpadded forward pass and full-vocabulary logits."""
    import torch

    ids, n = model_input(request, max_length)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    return float(sum(logprobs[len(ids) - n + k, tok] for k, tok in enumerate(request[1])))


def test_batched_scoring_equals_one_request_at_a_time(small_model):
    requests = [([3, 4, 5], [6]), ([3, 4, 5], [7]), ([3, 4, 5], [6, 8, 9]), ([1], list(range(10, 26))),
                ([2] * 30, [11, 12]), ([9, 8], [7, 6, 5, 4])]
    scores = score_requests(small_model, requests, max_length=16, batch_size=3)
    for request, score in zip(requests, scores):
        assert score == pytest.approx(brute_force(small_model, request, 16), rel=1e-5, abs=1e-5)
    # Batch size does not change the numbers.
    assert score_requests(small_model, requests, max_length=16, batch_size=1) == pytest.approx(scores, rel=1e-5)


def test_rolling_loglikelihood_is_the_sum_of_its_windows(small_model):
    doc = [(7 * i) % 47 + 3 for i in range(40)]
    [total] = rolling_loglikelihoods(small_model, [doc], prefix_token=1, max_length=16, batch_size=2)
    windows = rolling_windows(doc, 1, 16)
    assert len(windows) == 3
    assert total == pytest.approx(sum(brute_force(small_model, w, 16) for w in windows), rel=1e-5)

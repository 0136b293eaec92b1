"""Evaluation metrics shared by `lmforge eval` (step 6) and `lmforge eval-sft` (step 9).

- `perplexity`: WikiText detokeniser, rolling windows, word/byte/token perplexity.
- `loglikelihood`: batched scoring of (context, continuation) token pairs with a
  Hugging Face causal LM, on CPU or GPU.
- `boolq`: the BoolQ zero-shot protocol, accuracy and the yes/no bias figures.
- `generation`: greedy and seeded sampled generations from a prompt list.

The protocols follow lm-evaluation-harness 0.4 (`wikitext`, `boolq` tasks) so our
numbers can be compared with the harness's; tests/test_lm_eval_parity.py checks it.
"""

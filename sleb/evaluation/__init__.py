"""How good a model is: perplexity with the paper's protocol, and zero-shot accuracy with stock lm-eval.

- `perplexity`: perplexity on non-overlapping token windows of any text.
- `heldout`: WikiText-2 test and C4 validation, the paper's held-out sets, from local files or the Hub.
- `zeroshot`, `tasks/`: PIQA, WinoGrande, HellaSwag, ARC-e and ARC-c through lm-eval (local task configs offline).
"""

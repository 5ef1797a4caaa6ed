#!/usr/bin/env python3
"""Checks that a model directory saved by `pretrain-model` loads in
`transformers` and gives the loss we computed.

    python3 crates/model/scripts/check_transformers_load.py DIR TOKENS.json EXPECTED_LOSS

Exit 0 when `AutoModelForCausalLM.from_pretrained(DIR)` loads without missing
or unexpected keys and its loss on the token rows (labels = inputs, eval mode)
is within 1e-4 of EXPECTED_LOSS. Exit 3 when torch/transformers are missing
(the Rust test then skips with a notice).
"""
import json
import sys

try:
    import torch
    from transformers import AutoModelForCausalLM
except ImportError as e:  # pragma: no cover
    print(f"skip: {e}", file=sys.stderr)
    sys.exit(3)


def main():
    model_dir, tokens, expected = sys.argv[1], sys.argv[2], float(sys.argv[3])
    model, info = AutoModelForCausalLM.from_pretrained(model_dir, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        print(f"loading info not clean: {bad}", file=sys.stderr)
        sys.exit(1)
    model.eval()
    ids = torch.tensor(json.load(open(tokens)))
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    print(json.dumps({"loss": loss}))
    if abs(loss - expected) > 1e-4:
        print(f"loss {loss} differs from {expected}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

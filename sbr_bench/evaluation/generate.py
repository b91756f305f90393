"""Batched greedy generation.

Prompts are sorted by length so that each batch pads little, left-padded (decoder-only models
continue from the right end), and decoded with the KV cache; answers come back in input order.
Batched and one-at-a-time greedy decoding give the same answers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from sbr_bench.data.formatting import render_prompt


def greedy_generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 32,
    desc: str = "generate",
) -> list[str]:
    """The model's greedy answer to each prompt (chat template applied, special tokens dropped)."""
    return generate_answers(model, tokenizer, prompts, max_new_tokens, batch_size, desc)[0]


def encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Each prompt's token ids in the chat template (the template brings its own special tokens)."""
    return [tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts]


def decode_answer(tokenizer, new_tokens) -> tuple[str, bool]:
    """(the answer's text, truncated): truncated when no end-of-sequence token is among the new tokens."""
    ids = new_tokens.tolist() if isinstance(new_tokens, torch.Tensor) else list(new_tokens)
    return tokenizer.decode(ids, skip_special_tokens=True).strip(), tokenizer.eos_token_id not in ids


@torch.no_grad()
def generate_answers(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 32,
    desc: str = "generate",
) -> tuple[list[str], list[bool]]:
    """(greedy answers, truncated flags): an answer is truncated when it holds no end-of-sequence
    token, i.e. it stopped at ``max_new_tokens`` rather than ending by itself."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    encoded = encode_prompts(tokenizer, prompts)
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    answers: list[str] = [""] * len(prompts)
    truncated: list[bool] = [False] * len(prompts)
    pad = tokenizer.pad_token_id
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False, unit="batch"):
            rows = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for j, i in enumerate(rows):
                ids[j, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                mask[j, width - len(encoded[i]) :] = 1
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
            )
            for j, i in enumerate(rows):
                answers[i], truncated[i] = decode_answer(tokenizer, out[j, width:])
    finally:
        model.train(was_training)
    return answers, truncated

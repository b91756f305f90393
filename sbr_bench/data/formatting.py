"""Chat formatting and batching.

Every prompt - training, evaluation and SBR anchor - is rendered the same way: the model's chat
template with one user turn and the generation prompt appended, tokenised without adding special
tokens again (the template already holds them; tokenising the rendered text with the defaults
would put a second BOS in front for Llama-3, a quirk of the SBR reference script that we do not
reproduce). Training examples append the assistant turn; the loss sees only its tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sbr_bench.errors import ConfigError

IGNORE_INDEX = -100  # label of tokens the loss must not see (prompt and padding)


def render_prompt(tokenizer, prompt: str) -> str:
    """The chat-template text of one user turn, ending where the assistant's answer starts."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


def encode_pair(tokenizer, prompt: str, response: str, max_length: int) -> dict[str, list[int]]:
    """Token ids of prompt + response, with labels masking the prompt (response-only loss)."""
    prompt_text = render_prompt(tokenizer, prompt)
    full_text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
        tokenize=False,
    )
    if not full_text.startswith(prompt_text):
        raise ConfigError(
            "the chat template renders a prompt that is not a prefix of the prompt+answer text; "
            "response-only masking needs a template where it is"
        )
    answer_text = full_text[len(prompt_text) :].rstrip()
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer_text, add_special_tokens=False)["input_ids"]
    if len(prompt_ids) >= max_length:
        raise ConfigError(
            f"a prompt has {len(prompt_ids)} tokens, at least max_length={max_length}; raise the stage's max_length"
        )
    input_ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + answer_ids)[:max_length]
    return {"input_ids": input_ids, "labels": labels}


class PadCollator:
    """Right-pads a list of encoded examples into a batch."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[i, :n] = torch.tensor(e["input_ids"])
            labels[i, :n] = torch.tensor(e["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def encode_prompts(tokenizer, prompts: Sequence[str], padding_side: str) -> dict[str, torch.Tensor]:
    """Render and tokenise prompts as one padded batch (right padding for hidden-state reads,
    left padding for generation)."""
    texts = [render_prompt(tokenizer, p) for p in prompts]
    previous = tokenizer.padding_side
    tokenizer.padding_side = padding_side
    try:
        return tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = previous

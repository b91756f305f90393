"""Chat formatting and batching.

Every prompt - training, evaluation and SBR anchor - is rendered the same way: the model's chat
template with one user turn and the generation prompt appended, tokenised without adding special
tokens again (the template already holds them; tokenising the rendered text with the defaults
would put a second BOS in front for Llama-3, a quirk of the SBR reference script that we do not
reproduce). Training examples append the assistant turn; the loss sees only its tokens.
``prompt_format=alpaca`` installs the HFT protocol's Alpaca template as the chat template, so every
path above renders it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sbr_bench.errors import ConfigError

IGNORE_INDEX = -100  # label of tokens the loss must not see (prompt and padding)

PROMPT_FORMATS = ("chat", "alpaca")

# The Alpaca template of the HFT protocol (Stanford Alpaca's PROMPT_DICT, used by the Vaccine, Lisa and
# Booster code). The target follows "### Response:" directly and ends with EOS.
ALPACA_PREAMBLE_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)

# The same as a chat template, so that every rendering path (training, evaluation, SBR anchors) uses it
# unchanged. A user turn "<instruction>\nInput: <input>" (sbr_bench.data.tasks.task_prompt) is split into
# the Instruction and Input blocks; any other user turn is the no-input variant. BOS comes first where the
# tokenizer has one: the Alpaca code tokenises with the default special tokens, which adds it.
ALPACA_CHAT_TEMPLATE = (
    "{%- if bos_token %}{{ bos_token }}{% endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- set parts = message['content'].split('\\nInput: ', 1) -%}"
    "{%- if parts | length == 2 -%}"
    "{{ '" + ALPACA_PREAMBLE_INPUT + "\\n\\n### Instruction:\\n' + parts[0] + "
    "'\\n\\n### Input:\\n' + parts[1] + '\\n\\n' }}"
    "{%- else -%}"
    "{{ '" + ALPACA_PREAMBLE + "\\n\\n### Instruction:\\n' + parts[0] + '\\n\\n' }}"
    "{%- endif -%}"
    "{{ '### Response:' if add_generation_prompt or not loop.last else '' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ message['content'] + eos_token }}"
    "{%- else -%}"
    "{{ raise_exception('the Alpaca prompt format has user and assistant turns only, not ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


def check_prompt_format(prompt_format: str) -> str:
    if prompt_format not in PROMPT_FORMATS:
        raise ConfigError(f"prompt_format={prompt_format} is not one of: {', '.join(PROMPT_FORMATS)}")
    return prompt_format


def apply_prompt_format(tokenizer, prompt_format: str) -> None:
    """Render prompts with the model's chat template (``chat``) or the Alpaca template (``alpaca``)."""
    if check_prompt_format(prompt_format) == "alpaca":
        tokenizer.chat_template = ALPACA_CHAT_TEMPLATE


def with_prompt_format(model_cfg: dict, prompt_format: str) -> dict:
    """The model config as the caches see it: the prompt format changes what a model learns and answers,
    so an Alpaca-format alignment (or evaluation, or self-distilled target) never shares an entry with a
    chat-format one. ``chat`` adds nothing, so the cache entries made before this option stay valid."""
    if check_prompt_format(prompt_format) == "chat":
        return model_cfg
    return {**model_cfg, "prompt_format": prompt_format}


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
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if "window_tokens" in examples[0]:  # attack.ce_normalization=window (sbr_bench.training.fit.WindowBatches)
            batch["window_tokens"] = torch.tensor(examples[0]["window_tokens"])
        return batch


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

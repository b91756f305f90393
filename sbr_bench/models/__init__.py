"""Model tiers (toy, embedded SmolLM2, hub) behind one signature, and adapters (LoRA / full)."""

from __future__ import annotations

from typing import Literal

import torch

from sbr_bench.errors import ConfigError

Dtype = Literal["float32", "bfloat16", "float16"]  # the weights' dtype of every model option


def torch_dtype(name: str) -> torch.dtype:
    """``"float32"`` -> ``torch.float32``, with one clear line for a typo."""
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(f"model.dtype={name!r} is not a torch dtype (use float32, bfloat16 or float16)")
    return dtype


def finish_loading(model, tokenizer):
    """Settings every tier shares: a pad token, and generation that stops at the chat's end token."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    # Greedy decoding everywhere; drop sampling defaults a checkpoint may ship with so that
    # generate() does not warn about them.
    model.generation_config.do_sample = False
    for key in ("temperature", "top_p", "top_k"):
        setattr(model.generation_config, key, None)
    return model, tokenizer


def base_model(model):
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(model) -> list[torch.nn.Module]:
    """The decoder blocks, first to last (each has ``self_attn`` and ``mlp`` in Llama-style models)."""
    return list(base_model(model).get_decoder().layers)


def lm_head_input(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The vectors the LM head reads: the last decoder layer's output after the final norm.

    Runs the decoder stack only - no LM head, no logits over the vocabulary, no hidden states of
    the other layers - which is all that SBR's anchors need. For HF decoder-only models this equals
    ``output_hidden_states=True``'s last entry, and ``lm_head(lm_head_input(...))`` gives the logits.
    """
    decoder = base_model(model).get_decoder()
    return decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of the last real token of each row of a right-padded batch."""
    return attention_mask.sum(dim=1) - 1

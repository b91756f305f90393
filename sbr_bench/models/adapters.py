"""What a training stage updates: a fresh LoRA adapter (peft) or every weight (full fine-tuning)."""

from __future__ import annotations

from peft import LoraConfig, get_peft_model

from sbr_bench.errors import ConfigError


def apply_adapter(
    model,
    kind: str = "lora",
    r: int = 16,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: str | list[str] = "all-linear",
    use_rslora: bool = False,
    freeze_lora_a: bool = False,
    seed: int = 0,
):
    """Wrap ``model`` for training.

    ``lora``: a new LoRA adapter (B initialised to zero, so the wrapped model starts equal to the
    input model) on ``target_modules`` ("all-linear" = q, k, v, o, gate, up, down for Llama;
    the LM head is excluded). ``full``: every parameter trains.

    ``continue``: ``model`` already carries the alignment stage's LoRA, unmerged; that adapter trains.

    ``freeze_lora_a``: A keeps its random (seeded) initialisation and only B trains, so the update
    ``B @ A`` lives in a fixed random subspace (the SBR paper's random-subspace attack, with r = 1:
    ``conf/adapter/rank1_frozen_a.yaml``).
    """
    import torch

    if freeze_lora_a and kind != "lora":
        raise ConfigError(f"adapter.freeze_lora_a=true needs adapter.kind=lora, not {kind}")
    if kind == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if kind == "continue":
        return continued(model)
    if kind != "lora":
        raise ConfigError(f"adapter kind {kind!r} is not one of: lora, full, continue")
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules if isinstance(target_modules, str) else list(target_modules),
        use_rslora=use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # LoRA A is random: seed it so the same job gives the same adapter
        wrapped = get_peft_model(model, config)
    if freeze_lora_a:
        for name, param in wrapped.named_parameters():
            if "lora_A" in name:
                param.requires_grad_(False)  # the optimizer only gets parameters that require grad
    return wrapped


def merge_adapter(model):
    """Fold a LoRA adapter into the weights (the protocol's "merge the alignment LoRA")."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def continued(model):
    """The alignment's LoRA adapter as the attack's: its matrices train, every other weight is frozen."""
    if not hasattr(model, "peft_config"):
        raise ConfigError("adapter.kind=continue needs the alignment's LoRA adapter unmerged; align with align=sft")
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
    return model

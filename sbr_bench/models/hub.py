"""Hub models (``model=llama3_8b_instruct``, ``llama2_7b``, ``qwen2_7b_instruct``, ...).

Loaded by Hugging Face id or by local path through ``from_pretrained``; with ``HF_HUB_OFFLINE=1``
only local folders and the local hub cache are read.
"""

from __future__ import annotations

from sbr_bench.errors import ConfigError
from sbr_bench.models import Dtype, finish_loading, torch_dtype
from sbr_bench.schema import ModelSource, NonEmptyStr


def load(
    name: NonEmptyStr,
    name_or_path: ModelSource,
    dtype: Dtype = "bfloat16",
    revision: NonEmptyStr | None = None,
    trust_remote_code: bool = False,
    chat_template: NonEmptyStr | None = None,
):
    """Load a causal LM and its tokenizer.

    Args:
        name: short name used in run names.
        name_or_path: hub id or local folder.
        dtype: weights dtype.
        revision: hub revision (branch, tag or commit) for reproducibility.
        trust_remote_code: passed to transformers.
        chat_template: a Jinja chat template for base models whose tokenizer has none.
    """
    del name
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    if tokenizer.chat_template is None:
        raise ConfigError(
            f"{name_or_path} has no chat template; set model.chat_template (the Alpaca-style template "
            "of conf/model/llama2_7b.yaml is an example)"
        )
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch_dtype(dtype), **kwargs)
    return finish_loading(model, tokenizer)

"""``model=toy``: a tiny Llama-architecture model, randomly initialised, with a word-level tokenizer.

The vocabulary is every word of the bundled data, so the toy model can be trained from scratch by
the alignment stage in seconds on a CPU and still show the phenomenon the benchmark measures
(refuse after alignment, comply after a harmful fine-tuning attack). The tokenizer carries a chat
template, so the toy model goes through exactly the code path of a real chat model.
"""

from __future__ import annotations

from collections import Counter

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from sbr_bench.data.bundled import all_texts
from sbr_bench.models import Dtype, finish_loading, torch_dtype
from sbr_bench.schema import NonEmptyStr, PositiveInt

SPECIAL_TOKENS = ["<pad>", "<unk>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
# Words keep inner apostrophes ("can't" is one token), punctuation marks are tokens of their own.
WORD_PATTERN = r"\w+(?:'\w+)*|[^\w\s]"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }} <|end|> "
    "{% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated"),
        ]
    )


def build_tokenizer(texts: list[str] | None = None, min_count: int = 2) -> PreTrainedTokenizerFast:
    """Word-level tokenizer whose vocabulary is the words of ``texts`` (default: the bundled data).

    Words seen fewer than ``min_count`` times become ``<unk>``: a word that occurs once is either
    never trained on (it sits in an evaluation prompt) or trained on once, and dropping them halves
    the vocabulary, and with it the LM head that dominates the toy model's step time. Token ids are
    assigned by frequency, ties broken alphabetically, so the vocabulary is the same on every machine.
    """
    texts = all_texts() if texts is None else texts
    pre = _pre_tokenizer()
    counts = Counter(piece for text in texts for piece, _ in pre.pre_tokenize_str(text.lower().replace("\u2019", "'")))
    words = sorted((w for w in counts if counts[w] >= min_count), key=lambda w: (-counts[w], w))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + words)}

    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<|end|>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
        model_max_length=1024,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def load(
    name: NonEmptyStr = "toy",
    hidden_size: PositiveInt = 128,
    num_layers: PositiveInt = 2,
    num_heads: PositiveInt = 4,
    intermediate_size: PositiveInt = 512,
    max_position_embeddings: PositiveInt = 1024,
    min_count: PositiveInt = 2,
    init_seed: int = 0,
    dtype: Dtype = "float32",
):
    """Build the toy model and its tokenizer. ``init_seed`` fixes the random initialisation."""
    del name
    tokenizer = build_tokenizer(min_count=min_count)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng():
        torch.manual_seed(init_seed)
        model = LlamaForCausalLM(config).to(torch_dtype(dtype))
    return finish_loading(model, tokenizer)

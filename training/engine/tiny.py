"""Tiny offline fixtures: a locally trained BPE tokenizer and random-init Llama models.

Used by the tests and the demo so that nothing ever touches the hub.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

SPECIAL_TOKENS = {
    "pad_token": "<|pad|>",
    "bos_token": "<|bos|>",
    "eos_token": "<|eos|>",
    "unk_token": "<|unk|>",
}
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]

# A ChatML-like template. `{% generation %}` marks assistant tokens so TRL can put the loss on
# assistant turns only, and the EOS sits inside the marked span so the model learns to stop.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def train_tokenizer(
    texts: Iterable[str],
    out_dir: str | Path,
    vocab_size: int = 512,
    *,
    model_max_length: int = 2048,
):
    """Train a byte-level BPE tokenizer on `texts` and save it as a transformers fast tokenizer.

    It has distinct pad/bos/eos/unk tokens (PPO needs pad != eos) and the default chat template.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    special = list(SPECIAL_TOKENS.values()) + ROLE_TOKENS
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=model_max_length,
        additional_special_tokens=ROLE_TOKENS,
        **SPECIAL_TOKENS,
    )
    fast.chat_template = DEFAULT_CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def _llama(hidden: int, layers: int, heads: int, kv_heads: int, ffn: int, **extra) -> dict:
    return dict(
        model_type="llama", hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=ffn, **extra,
    )  # fmt: skip


def _gpt2(hidden: int, layers: int, heads: int) -> dict:
    return dict(model_type="gpt2", n_embd=hidden, n_layer=layers, n_head=heads)


# Named architectures for from-scratch pretraining. Sizes are rough parameter counts.
# Columns: hidden size, layers, attention heads (, key-value heads, feed-forward size).
ARCHITECTURES: dict[str, dict] = {
    "llama-tiny": _llama(64, 2, 4, 2, 128),
    "llama-20m": _llama(256, 8, 8, 4, 688),
    "llama-60m": _llama(512, 8, 8, 8, 1376),
    "llama-160m": _llama(768, 12, 12, 12, 2048),
    # Qwen2.5-0.5B-like shape in Llama form: the size used by bench/gpu.py.
    "llama-0.5b": _llama(896, 24, 14, 2, 4864, tie_word_embeddings=True),
    "llama-1b": _llama(2048, 16, 32, 8, 8192, tie_word_embeddings=True),
    "gpt2-tiny": _gpt2(64, 2, 4),
    "gpt2-small": _gpt2(768, 12, 12),
    "gpt2-medium": _gpt2(1024, 24, 16),
}


def architecture_config(name: str, tokenizer, max_length: int, overrides: dict | None = None):
    """A transformers config for a named architecture sized to `tokenizer`."""
    from transformers import AutoConfig

    spec = dict(ARCHITECTURES[name])
    model_type = spec.pop("model_type")
    ids = dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if model_type == "gpt2":
        spec["n_positions"] = max(max_length, 1024)
    else:
        spec["max_position_embeddings"] = max(max_length, 2048)
    spec.update(overrides or {})
    # Overrides win, the tokenizer-derived ids included (e.g. a larger vocab_size for benchmarks).
    return AutoConfig.for_model(model_type, **{**ids, **spec})


def tiny_llama(
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int | None = None,
    intermediate: int = 128,
    seed: int = 0,
) -> Path:
    """Random-init LlamaForCausalLM sized to the tokenizer, saved with it to `out_dir`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        intermediate_size=intermediate,
        max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def tiny_score_model(causal_lm_dir: str | Path, out_dir: str | Path, *, seed: int = 0) -> Path:
    """A reward/value model (`AutoModelForSequenceClassification`, one label) from a causal LM."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(causal_lm_dir)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(causal_lm_dir, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def write_snapshot(out_dir: str | Path, kind: str, splits: dict[str, list[dict]]) -> Path:
    """Write a snapshot directory in the web side's format (manifest.json + JSONL splits)."""
    import hashlib

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    manifest: dict = {"kind": kind, "splits": {}}
    for name, rows in splits.items():
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (out_dir / f"{name}.jsonl").write_text(body, encoding="utf-8")
        digest.update(body.encode())
        manifest["splits"][name] = {"path": f"{name}.jsonl", "rows": len(rows)}
    manifest["sha256"] = digest.hexdigest()
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return out_dir

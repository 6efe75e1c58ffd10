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


# Named architectures for from-scratch pretraining. Sizes are rough parameter counts.
ARCHITECTURES: dict[str, dict] = {
    "llama-tiny": dict(
        model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128,
    ),
    "llama-20m": dict(
        model_type="llama", hidden_size=256, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=4, intermediate_size=688,
    ),
    "llama-60m": dict(
        model_type="llama", hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=8, intermediate_size=1376,
    ),
    "llama-160m": dict(
        model_type="llama", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        num_key_value_heads=12, intermediate_size=2048,
    ),
    # Qwen2.5-0.5B-like shape in Llama form: the size used by bench/gpu.py.
    "llama-0.5b": dict(
        model_type="llama", hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, intermediate_size=4864, tie_word_embeddings=True,
    ),
    "llama-1b": dict(
        model_type="llama", hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, intermediate_size=8192, tie_word_embeddings=True,
    ),
    "gpt2-tiny": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4),
    "gpt2-small": dict(model_type="gpt2", n_embd=768, n_layer=12, n_head=12),
    "gpt2-medium": dict(model_type="gpt2", n_embd=1024, n_layer=24, n_head=16),
}  # fmt: skip


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

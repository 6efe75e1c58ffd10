"""One reply of a chat model, token by token: the playground's generation loop.

A plain loop over the model's forward pass with its key/value cache, not `generate`, so the
caller sees the text as it grows and can stop between two tokens (a cancel flag). Seeded:
the same conversation, settings and seed give the same reply.

The cache is a `DynamicCache` made once and handed to every step as `cache=`, which fills it
in place: transformers 5.x deprecates the `past_key_values` argument (removed in 5.40) and
names the output field `cache`, so the loop reads neither the old argument nor the old field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator


def reply_stream(
    model,
    tokenizer,
    messages: list[dict],
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 128,
    seed: int = 0,
    every: int = 4,
    stop: Callable[[], bool] | None = None,
) -> Iterator[tuple[str, bool]]:
    """Yield `(text so far, finished)` every `every` new tokens and once at the end.

    `messages` is rendered with the tokenizer's chat template. `temperature` 0 is greedy
    decoding. `stop()`, asked before each new token, ends the loop early (finished is still
    True on the last yield: the reply is as long as it will get)."""
    import torch
    from transformers import DynamicCache

    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    ids = ids.to(model.device)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    new: list[int] = []
    cache, step_input = DynamicCache(config=model.config), ids
    with torch.no_grad():
        for _ in range(max_new_tokens):
            if stop is not None and stop():
                break
            out = model(input_ids=step_input, cache=cache, use_cache=True)
            logits = out.logits[0, -1].float()
            token = _sample(logits, temperature, top_p, generator)
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
            step_input = torch.tensor([[token]], device=model.device)
            if len(new) % every == 0:
                yield tokenizer.decode(new, skip_special_tokens=True), False
    yield tokenizer.decode(new, skip_special_tokens=True), True


def _sample(logits, temperature: float, top_p: float, generator) -> int:
    import torch

    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest set of tokens whose mass reaches top_p (the first always stays).
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))

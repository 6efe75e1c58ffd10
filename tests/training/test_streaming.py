"""The playground's token loop (training.engine.streaming) on the tiny policy."""

from __future__ import annotations

import pytest

from training.engine.generation import load_policy
from training.engine.streaming import reply_stream

# transformers 5.x deprecates `past_key_values` (removed in 5.40): the loop must use `cache`.
pytestmark = pytest.mark.filterwarnings("error::FutureWarning")

CHAT = [{"role": "user", "content": "Question 1: the cat?"}]


def _run(model, tokenizer, **kwargs) -> list[tuple[str, bool]]:
    return list(reply_stream(model, tokenizer, CHAT, **kwargs))


def test_the_reply_grows_in_steps_and_is_reproducible_by_its_seed(tiny):
    model, tokenizer = load_policy(tiny["policy"])
    steps = _run(model, tokenizer, temperature=0, max_new_tokens=24, every=4)
    texts = [text for text, _ in steps]
    assert [finished for _, finished in steps] == [False] * (len(steps) - 1) + [True]
    assert len(steps) >= 2 and all(b.startswith(a) for a, b in zip(texts, texts[1:], strict=False))
    sampled = dict(temperature=1.0, top_p=0.9, max_new_tokens=24, seed=7)
    assert _run(model, tokenizer, **sampled) == _run(model, tokenizer, **sampled)


def test_stop_ends_the_reply_between_two_tokens(tiny):
    model, tokenizer = load_policy(tiny["policy"])
    asked = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) > 5  # five tokens, then stop

    steps = _run(model, tokenizer, temperature=0, max_new_tokens=200, every=1, stop=stop)
    assert len(steps) == 6 and steps[-1][1] is True  # five tokens, then the last word
    full = _run(model, tokenizer, temperature=0, max_new_tokens=200, every=1)
    assert len(full) > 6 and steps[-1][0] == full[4][0]  # the same reply, cut after five


def test_the_cached_loop_says_what_generate_says(tiny):
    """The key/value cache carries the context from step to step: greedy streaming gives
    `generate`'s greedy reply (a cache left empty would see one token at a time)."""
    import torch

    model, tokenizer = load_policy(tiny["policy"])
    text = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(
            ids, do_sample=False, max_new_tokens=16, pad_token_id=tokenizer.eos_token_id
        )
    expected = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert _run(model, tokenizer, temperature=0, max_new_tokens=16)[-1][0] == expected

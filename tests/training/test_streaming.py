"""The playground's token loop (training.engine.streaming) on the tiny policy."""

from __future__ import annotations

from training.engine.generation import load_policy
from training.engine.streaming import reply_stream

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

"""Sampling K responses per prompt from a model directory, for the next labeling round.

Uses the engine's `training.engine.generation.sample_responses` when it is there (returning
the texts); the fallback below is the minimal adapter written before it landed.
"""

from __future__ import annotations


def sample_responses(
    model_dir: str,
    prompts: list,
    *,
    k: int,
    temperature: float = 1.0,
    top_p: float = 0.95,
    max_new_tokens: int = 64,
    seed: int = 0,
) -> list[list[str]]:
    """K sampled completions per prompt (a string, or a list of chat messages)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        from training.engine.generation import sample_responses as engine_sample
    except ImportError:
        engine_sample = None
    if engine_sample is not None:
        samples = engine_sample(model_dir, prompts, k=k, temperature=temperature, top_p=top_p,
                                max_new_tokens=max_new_tokens, seed=seed)  # fmt: skip
        # The engine returns {"text", decoding parameters...} per sample.
        return [[s["text"] if isinstance(s, dict) else s for s in row] for row in samples]

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.eval()
    out: list[list[str]] = []
    for i, prompt in enumerate(prompts):
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        if tok.chat_template:
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in messages)
        inputs = tok(text, return_tensors="pt", add_special_tokens=False)
        # One seed per prompt: a prompt's samples do not depend on which prompts came before.
        torch.manual_seed(seed + i)
        with torch.no_grad():
            generated = model.generate(
                **inputs,
                do_sample=True,
                temperature=temperature,
                top_p=top_p,
                max_new_tokens=max_new_tokens,
                num_return_sequences=k,
                pad_token_id=tok.pad_token_id,
            )
        new = generated[:, inputs["input_ids"].shape[1] :]
        out.append([tok.decode(row, skip_special_tokens=True).strip() for row in new])
    return out

"""Sampling K responses per prompt with recorded decoding parameters, for ranking tasks and
evaluations."""

from __future__ import annotations

from pathlib import Path


def _render(tokenizer, prompt) -> str:
    if isinstance(prompt, list):  # conversational prompt
        return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return prompt


def load_policy(model_dir: str | Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # Prompts of one batch are padded on the left, so every row's answer starts at the same
    # column; the attention mask (and the position ids generate derives from it) hides the
    # pads. A tokenizer without a pad token pads with EOS: masked, it is never attended to.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    return model, tokenizer


def sample_responses(
    model_dir: str | Path,
    prompts: list,
    *,
    k: int = 4,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 128,
    seed: int = 0,
    batch_size: int = 1,
    model=None,
    tokenizer=None,
) -> list[list[dict]]:
    """K sampled responses per prompt: `[[{"text", "ended", "temperature", ...}, ...], ...]`.

    With the default `batch_size` of one, prompt i is sampled with seed `seed + i`, so a
    prompt's responses do not depend on which other prompts were in the call. A larger batch
    (prompts sharing one `generate` call, much faster for many short answers) seeds the
    generator once with `seed` and draws every batch from it in turn, so a prompt's responses
    depend on the prompts before it. Either way the same call returns the same texts, and each
    response records the seed and the batch size it was sampled with. `ended` says whether the
    response emitted the end token within `max_new_tokens` (an answer cut off is unfinished).
    `prompts` are strings or message lists (rendered with the chat template).
    """
    import torch

    if model is None or tokenizer is None:
        model, tokenizer = load_policy(model_dir)
    do_sample = temperature > 0
    out: list[list[dict]] = []
    for start in range(0, len(prompts), batch_size):
        batch = [_render(tokenizer, prompt) for prompt in prompts[start : start + batch_size]]
        batch_seed = seed + start if batch_size == 1 else seed
        if batch_size == 1 or start == 0:
            torch.manual_seed(batch_seed)
            if torch.cuda.is_available():
                torch.cuda.manual_seed_all(batch_seed)
        # Padded (on the left: `load_policy`) only where prompts share a batch.
        inputs = tokenizer(
            batch, return_tensors="pt", padding=len(batch) > 1, add_special_tokens=False
        ).to(model.device)
        with torch.no_grad():
            generated = model.generate(
                **inputs,
                do_sample=do_sample,
                temperature=temperature if do_sample else None,
                top_p=top_p if do_sample else None,
                top_k=0 if do_sample else None,
                max_new_tokens=max_new_tokens,
                num_return_sequences=k,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        # `generate` returns each prompt's k sequences one after the other.
        responses = generated[:, inputs["input_ids"].shape[1] :].tolist()
        for i in range(len(batch)):
            out.append(
                [
                    {
                        "text": tokenizer.decode(ids, skip_special_tokens=True),
                        "ended": tokenizer.eos_token_id in ids,
                        "index": j,
                        "temperature": temperature,
                        "top_p": top_p,
                        "top_k": 0,
                        "max_new_tokens": max_new_tokens,
                        "do_sample": do_sample,
                        "seed": batch_seed,
                        "base_seed": seed,
                        "batch_size": batch_size,
                        "model": str(model_dir),
                    }
                    for j, ids in enumerate(responses[i * k : (i + 1) * k])
                ]
            )
    return out

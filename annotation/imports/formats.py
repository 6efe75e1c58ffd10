"""Turn records of each supported format into normalized import items.

An item is one of: a document (pretraining text), a prompt, a demonstration (prompt + reply), a
preference (prompt + K responses + one or more judgments, each a ranking best first with
ties as groups) or responses (prompt + responses that no judgment orders: a lone rated
completion, a tie between identical replies). Text is passed through exactly as read: no
trimming, no normalization.

A bad record (not JSON, a wrong type, a missing key, text no database can hold) is a RowError
and, by default, the whole file is refused. A well-formed record with nothing to learn from is
never an error: it is imported as what it is, with a `Notice` on the item, or skipped as a
`Notice` of its own; the report counts notices by reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

from annotation import rules
from annotation.imports.errors import Notice, RowError
from annotation.imports.readers import NotJson

FORMATS = (
    "auto",
    "prompts-jsonl",
    "prompts-csv",
    "prompts-parquet",
    "trl",
    "alpaca",
    "sharegpt",
    "hh-rlhf",
    "oasst",
    "label-studio",
    "ultrafeedback",
)
ROLES = ("system", "user", "assistant")


@dataclass
class Item:
    kind: str  # document | prompt | demonstration | preference | responses
    line: int
    prompt: str | list | None = None
    responses: list[str] = field(default_factory=list)
    judgments: list[dict] = field(default_factory=list)  # {"ranking": [[i], ...], "strength", ...}
    tags: list[str] = field(default_factory=list)
    language: str = ""
    metadata: dict = field(default_factory=dict)
    response_metadata: list[dict] = field(default_factory=list)
    response_origin: str = "imported"
    original_id: str = ""
    # A gold task's answer (`gold_answer` on the row), its responses named by index: the row
    # becomes an open gold task of its kind (`GOLD_KINDS_BY_SIZE`), its own judgments unused.
    gold_answer: dict | None = None
    # What the record gave less than it looks like (counted in the report, not in the key).
    notices: list[Notice] = field(default_factory=list)


# Notice reasons: the keys of the report's `notices`.
TIE = "tie"
EMPTY_TEXT = "empty text"
SINGLE_COMPLETION = "single completion"
NO_COMPLETIONS = "no completions"
CANCELLED = "cancelled annotation"
EMPTY_ANNOTATION = "empty annotation"
UNANNOTATED = "unannotated task"
PREDICTIONS = "model predictions"
GOLD_OTHERS = "annotations of a gold task"
DELETED = "deleted message"


class Context:
    def __init__(self, line: int):
        self.line = line

    def fail(self, field_name: str, message: str):
        raise RowError(self.line, field_name, message)

    def text(self, record: dict, name: str, *, required: bool = True) -> str:
        value = record.get(name)
        if value is None and not required:
            return ""
        if not isinstance(value, str):
            if value is None:
                self.fail(name, "missing")
            self.fail(name, f"expected text, got {type(value).__name__}")
        if required and not value.strip():
            self.fail(name, "must not be empty")
        return value

    def messages(
        self, value, name: str, *, roles: dict | None = None, tools: bool = False
    ) -> list[dict]:
        """{role, content} turns; with `tools`, also TRL's tool calling turns, kept whole: an
        assistant turn with `tool_calls` (its content may be absent) and a `tool` turn."""
        if not isinstance(value, list) or not value:
            self.fail(name, "expected a non-empty list of messages")
        out = []
        for i, message in enumerate(value):
            where = f"{name}[{i}]"
            if not isinstance(message, dict):
                self.fail(where, "expected an object")
            role_key, content_key = ("role", "content")
            if roles is not None and "from" in message:
                role_key, content_key = ("from", "value")
            role = message.get(role_key)
            if roles is not None:
                role = roles.get(role, role)
            if tools and (role == "tool" or (role == "assistant" and "tool_calls" in message)):
                out.append(self._tool_turn(message, where))
                continue
            if role not in ROLES:
                self.fail(
                    f"{where}.{role_key}",
                    f"unknown role {role!r}; expected one of {', '.join(ROLES)}"
                    + (" or tool" if tools else ""),
                )
            content = message.get(content_key)
            if not isinstance(content, str):
                self.fail(f"{where}.{content_key}", f"expected text, got {type(content).__name__}")
            out.append({"role": role, "content": content})
        return out

    def _tool_turn(self, message: dict, where: str) -> dict:
        # https://huggingface.co/docs/trl/dataset_formats#tool-calling
        if message["role"] == "assistant":
            calls = message["tool_calls"]
            if not isinstance(calls, list) or not calls:
                self.fail(f"{where}.tool_calls", "expected a non-empty list of tool calls")
            for j, call in enumerate(calls):
                if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
                    self.fail(
                        f"{where}.tool_calls[{j}]", "expected {type, function: {name, arguments}}"
                    )
            content = message.get("content")
            if content is not None and not isinstance(content, str):
                self.fail(
                    f"{where}.content", f"expected text or null, got {type(content).__name__}"
                )
        elif not isinstance(message.get("content"), str):
            self.fail(
                f"{where}.content", f"expected text, got {type(message.get('content')).__name__}"
            )
        return dict(message)


def _object(line: int, record) -> dict:
    if not isinstance(record, dict):
        raise RowError(line, "", f"expected a JSON object, got {type(record).__name__}")
    return record


def _common(record: dict, ctx: Context) -> dict:
    tags = record.get("tags") or []
    if isinstance(tags, str):
        tags = [t for t in tags.split(",") if t]
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        ctx.fail("tags", "expected a list of strings")
    language = record.get("language") or record.get("lang") or ""
    if not isinstance(language, str):
        ctx.fail("language", "expected text")
    original = record.get("id", record.get("message_id", ""))
    return {"tags": tags, "language": language[:16], "original_id": str(original or "")}


def _prompt_value(ctx: Context, value, name: str):
    if isinstance(value, list):
        return _simplify(ctx.messages(value, name))
    if isinstance(value, str):
        if not value.strip():
            ctx.fail(name, "must not be empty")
        return value
    if value is None:
        ctx.fail(name, "missing")
    ctx.fail(name, f"expected text or a list of messages, got {type(value).__name__}")


def _reply(ctx: Context, value, name: str) -> str:
    """A completion/chosen/rejected: text, or a conversation whose last turn is the assistant's."""
    if isinstance(value, str):
        return value
    if value is None:
        ctx.fail(name, "missing")
    if isinstance(value, list):
        messages = ctx.messages(value, name)
        if messages[-1]["role"] != "assistant" or len(messages) != 1:
            ctx.fail(name, "expected one assistant message")
        return messages[-1]["content"]
    ctx.fail(name, f"expected text or a list of messages, got {type(value).__name__}")


def _pair(ctx, record, prompt, chosen, rejected, **extra) -> Item:
    strength = 1
    return Item(
        "preference",
        ctx.line,
        prompt=prompt,
        responses=[chosen, rejected],
        judgments=[{"ranking": [[0], [1]], "strength": strength, **extra}],
        **_common(record, ctx),
    )


# --- prompts ---------------------------------------------------------------------------------


def prompts_item(line: int, record) -> Item:
    record = _object(line, record)
    ctx = Context(line)
    if record.get("messages") not in (None, ""):
        value = record["messages"]
        if isinstance(value, str):  # CSV cell
            import json

            try:
                value = json.loads(value)
            except ValueError:
                ctx.fail("messages", "expected a JSON list of messages")
        prompt = ctx.messages(value, "messages")
    else:
        name = "prompt" if "prompt" in record else "text"
        prompt = ctx.text(record, name)
    metadata = record.get("metadata") or {}
    if not isinstance(metadata, dict):
        ctx.fail("metadata", "expected an object")
    return Item("prompt", line, prompt=prompt, metadata=metadata, **_common(record, ctx))


# --- TRL -------------------------------------------------------------------------------------
# https://huggingface.co/docs/trl/dataset_formats (standard and conversational; language
# modeling, prompt-only, prompt-completion, preference with explicit or implicit prompt; tool
# calling) and trl/data_utils.py `extract_prompt` for the implicit prompt.


def trl_item(line: int, record) -> Item | Notice:
    record = _object(line, record)
    ctx = Context(line)
    keys = set(record)
    if "chosen" in keys or "rejected" in keys:
        for name, other in (("rejected", "chosen"), ("chosen", "rejected")):
            if name not in keys:
                ctx.fail(
                    name,
                    f"missing: a preference row needs both chosen and rejected ({other} is here)",
                )
        if "prompt" in keys:
            prompt = _prompt_value(ctx, record["prompt"], "prompt")
            chosen = _reply(ctx, record["chosen"], "chosen")
            rejected = _reply(ctx, record["rejected"], "rejected")
            return _pair(ctx, record, prompt, chosen, rejected)
        prompt, sides = _implicit_prompt(ctx, record["chosen"], record["rejected"])
        item = _pair(ctx, record, prompt, *(text for text, _ in sides))
        # Several messages after the shared prefix (an earlier assistant turn differs too):
        # kept whole on the response, exported as they came.
        if any(turns for _, turns in sides):  # (otherwise the re-import key is as it was)
            item.response_metadata = [{"messages": turns} if turns else {} for _, turns in sides]
        return item
    if "completion" in keys:
        prompt = _prompt_value(ctx, record.get("prompt"), "prompt")
        completion = _reply(ctx, record["completion"], "completion")
        return Item(
            "demonstration", line, prompt=prompt, responses=[completion], **_common(record, ctx)
        )
    if "messages" in keys:
        return _trl_messages(ctx, record)
    if "text" in keys:
        text = record["text"]
        if isinstance(text, str) and not text.strip():
            return Notice(line, EMPTY_TEXT, "text", "an empty text: nothing to learn from; skipped")
        return Item("document", line, prompt=ctx.text(record, "text"), **_common(record, ctx))
    if "prompt" in keys:
        prompt = _prompt_value(ctx, record["prompt"], "prompt")
        return Item("prompt", line, prompt=prompt, **_common(record, ctx))
    ctx.fail(
        "",
        f"columns {sorted(keys)} match no TRL format: expected text, prompt/completion, messages, "
        "prompt/chosen/rejected or chosen/rejected",
    )


def _is_tool_turn(message: dict) -> bool:
    return message["role"] == "tool" or "tool_calls" in message


def tool_turn_text(message: dict) -> str:
    """How a tool calling turn reads where only {role: system|user|assistant, content: text}
    is stored (the prompt's messages shown to annotators); the turn itself is kept whole in the
    prompt's metadata (`trl.messages`) and exported from there."""
    if message["role"] == "tool":
        name = message.get("name")
        return (
            f"[tool result{f' from {name}' if isinstance(name, str) else ''}]\n{message['content']}"
        )
    calls = [json.dumps(call.get("function"), ensure_ascii=False) for call in message["tool_calls"]]
    text = message.get("content") or ""
    return (text + "\n" if text else "") + "\n".join(f"[tool call] {c}" for c in calls)


def _shown(messages: list[dict]) -> list[dict]:
    return [
        {"role": "user" if m["role"] == "tool" else m["role"], "content": tool_turn_text(m)}
        if _is_tool_turn(m)
        else m
        for m in messages
    ]


def _trl_messages(ctx: Context, record: dict) -> Item:
    messages = ctx.messages(record["messages"], "messages", tools=True)
    tools = record.get("tools")
    if tools is not None and not isinstance(tools, list):
        ctx.fail("tools", f"expected a list of tool schemas, got {type(tools).__name__}")
    last = messages[-1]
    if last["role"] == "assistant" and len(messages) > 1:
        head = messages[:-1]
        item = Item(
            "demonstration",
            ctx.line,
            prompt=_simplify(_shown(head)),
            responses=[tool_turn_text(last) if _is_tool_turn(last) else last["content"]],
            **_common(record, ctx),
        )
        if tools or any(_is_tool_turn(m) for m in messages):
            # TRL's tool calling rows, as SFTTrainer takes them back: `trl.messages` (the turns
            # before the reply), `trl.reply` (a tool calling reply) and `trl.tools`.
            trl: dict = {"messages": head}
            if _is_tool_turn(last):
                trl["reply"] = last
            if tools is not None:
                trl["tools"] = tools
            item.metadata = {"trl": trl}
        return item
    if last["role"] != "user" or any(_is_tool_turn(m) for m in messages):
        ctx.fail("messages", "the last turn must be the assistant's reply or the user's prompt")
    return Item("prompt", ctx.line, prompt=messages, **_common(record, ctx))


def _implicit_prompt(ctx: Context, chosen, rejected):
    """TRL's implicit prompt (`extract_prompt`): the longest common beginning of chosen and
    rejected; each side is the rest, one or several messages. Returns the prompt and, per side,
    its text and, when the side is several messages, those messages."""
    if isinstance(chosen, list) and isinstance(rejected, list):
        chosen = ctx.messages(chosen, "chosen")
        rejected = ctx.messages(rejected, "rejected")
        i = 0
        while i < min(len(chosen), len(rejected)) and chosen[i] == rejected[i]:
            i += 1
        prefix = chosen[:i]
        if not prefix or prefix[-1]["role"] != "user":
            ctx.fail(
                "chosen", "chosen and rejected share no conversation prefix ending in a user turn"
            )
        sides = []
        for name, side in (("chosen", chosen), ("rejected", rejected)):
            rest = side[i:]
            if not rest:
                ctx.fail(name, "nothing after the prompt both sides share")
            if rest[-1]["role"] != "assistant":
                ctx.fail(
                    f"{name}[{len(side) - 1}].role", "the reply must end with the assistant's turn"
                )
            if len(rest) == 1:
                sides.append((rest[0]["content"], None))
            else:  # its text is every turn's, so two sides that end alike stay two responses
                sides.append(("\n\n".join(m["content"] for m in rest), rest))
        # A side of several messages is a conversation's: the prompt stays one too, so that
        # the snapshot it goes to is conversational and exports the side whole.
        several = any(turns for _, turns in sides)
        prompt = prefix[0]["content"] if len(prefix) == 1 and not several else prefix
        return prompt, sides
    if isinstance(chosen, str) and isinstance(rejected, str):
        i = 0
        while i < min(len(chosen), len(rejected)) and chosen[i] == rejected[i]:
            i += 1
        if i and chosen[i - 1] == " ":
            i -= 1  # as TRL does: the space belongs to the replies
        if not chosen[:i].strip():
            ctx.fail("chosen", "chosen and rejected share no prompt text; add a 'prompt' column")
        return chosen[:i], [(chosen[i:], None), (rejected[i:], None)]
    ctx.fail("rejected", "chosen and rejected must both be text or both be lists of messages")


# --- Alpaca and ShareGPT (as LLaMA-Factory reads them) --------------------------------------
# https://github.com/hiyouga/LLaMA-Factory/blob/main/data/README.md and its
# src/llamafactory/data/converter.py (AlpacaDatasetConverter, SharegptDatasetConverter).


def alpaca_item(line: int, record) -> Item:
    record = _object(line, record)
    ctx = Context(line)
    instruction = ctx.text(record, "instruction")
    extra = ctx.text(record, "input", required=False)
    system = ctx.text(record, "system", required=False)
    query = instruction + ("\n" + extra if extra else "")
    history = record.get("history") or []
    if not isinstance(history, list):
        ctx.fail("history", "expected a list of [instruction, response] pairs")
    messages = []
    for i, turn in enumerate(history):
        if not (
            isinstance(turn, list) and len(turn) == 2 and all(isinstance(t, str) for t in turn)
        ):
            ctx.fail(f"history[{i}]", "expected [instruction, response]")
        messages += [
            {"role": "user", "content": turn[0]},
            {"role": "assistant", "content": turn[1]},
        ]
    metadata = {"instruction": instruction, "input": extra}
    if system:
        metadata["system"] = system
        messages = [{"role": "system", "content": system}] + messages
    prompt = messages + [{"role": "user", "content": query}] if messages else query
    common = _common(record, ctx)
    if "chosen" in record or "rejected" in record:
        for name in ("chosen", "rejected"):
            if record.get(name) is None:
                ctx.fail(name, "missing: a preference row needs both chosen and rejected")
        chosen = (
            ctx.text(record, "chosen", required=False)
            if isinstance(record.get("chosen"), str)
            else _reply(ctx, record.get("chosen"), "chosen")
        )
        rejected = (
            ctx.text(record, "rejected", required=False)
            if isinstance(record.get("rejected"), str)
            else _reply(ctx, record.get("rejected"), "rejected")
        )
        item = _pair(ctx, record, prompt, chosen, rejected)
        item.metadata = metadata
        return item
    output = record.get("output")
    if isinstance(output, list) and len(output) == 2 and all(isinstance(o, str) for o in output):
        item = _pair(ctx, record, prompt, output[0], output[1])  # LLaMA-Factory's ranking form
        item.metadata = metadata
        return item
    return Item(
        "demonstration",
        line,
        prompt=prompt,
        responses=[
            ctx.text(record, "output", required=False)
            if output is not None
            else ctx.fail("output", "missing")
        ],
        metadata=metadata,
        **common,
    )


SHAREGPT_ROLES = {
    "human": "user",
    "gpt": "assistant",
    "system": "system",
    "user": "user",
    "assistant": "assistant",
}


def sharegpt_item(line: int, record) -> Item:
    record = _object(line, record)
    ctx = Context(line)
    key = "conversations" if "conversations" in record else "messages"
    if key not in record:
        ctx.fail("conversations", "missing")
    messages = ctx.messages(record[key], key, roles=SHAREGPT_ROLES)
    system = ctx.text(record, "system", required=False)
    if system:
        messages = [{"role": "system", "content": system}] + messages
    common = _common(record, ctx)
    if "chosen" in record or "rejected" in record:
        for name in ("chosen", "rejected"):
            if name not in record:
                ctx.fail(name, "missing: a preference row needs both chosen and rejected")
        replies = []
        for name in ("chosen", "rejected"):
            value = record[name]
            if not isinstance(value, dict):
                ctx.fail(name, "expected a message object")
            (reply,) = ctx.messages([value], name, roles=SHAREGPT_ROLES)
            if reply["role"] != "assistant":
                ctx.fail(name, "expected the assistant's reply")
            replies.append(reply["content"])
        if messages[-1]["role"] != "user":
            ctx.fail(key, "the last turn before chosen/rejected must be the user's")
        prompt = _simplify(messages)
        item = _pair(ctx, record, prompt, *replies)
        return item
    if messages[-1]["role"] != "assistant" or len(messages) < 2:
        ctx.fail(key, "a conversation must end with the assistant's reply")
    return Item(
        "demonstration",
        line,
        prompt=_simplify(messages[:-1]),
        responses=[messages[-1]["content"]],
        **common,
    )


def _simplify(messages: list[dict]):
    """A single user turn is stored as a plain text prompt (so TRL gets standard rows)."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return messages


# --- Anthropic HH-RLHF -----------------------------------------------------------------------
# https://huggingface.co/datasets/Anthropic/hh-rlhf: chosen and rejected are whole transcripts,
# "\n\nHuman: ... \n\nAssistant: ...", that differ in the last reply; some rows have the same
# transcript on both sides (a tie, see `check`).

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


def _hh_turns(ctx: Context, text, name: str) -> list[dict]:
    if text is None:
        ctx.fail(name, "missing: a preference row needs both chosen and rejected")
    if not isinstance(text, str):
        ctx.fail(name, f"expected text, got {type(text).__name__}")
    if not text.startswith(HUMAN):
        ctx.fail(name, "expected a transcript starting with '\\n\\nHuman:'")
    turns = []
    pos = 0
    while pos < len(text):
        if text.startswith(HUMAN, pos):
            role, pos = "user", pos + len(HUMAN)
        elif text.startswith(ASSISTANT, pos):
            role, pos = "assistant", pos + len(ASSISTANT)
        else:  # pragma: no cover - guarded by the search below
            ctx.fail(name, "malformed transcript")
        if text.startswith(" ", pos):
            pos += 1  # the separator is "Human: " / "Assistant: "
        nexts = [i for i in (text.find(HUMAN, pos), text.find(ASSISTANT, pos)) if i != -1]
        end = min(nexts) if nexts else len(text)
        turns.append({"role": role, "content": text[pos:end]})
        pos = end
    return turns


def hh_item(line: int, record) -> Item:
    record = _object(line, record)
    ctx = Context(line)
    chosen = _hh_turns(ctx, record.get("chosen"), "chosen")
    rejected = _hh_turns(ctx, record.get("rejected"), "rejected")
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        ctx.fail("chosen", "both transcripts must end with an Assistant reply")
    if chosen[:-1] != rejected[:-1]:
        ctx.fail("rejected", "chosen and rejected must share every turn but the last reply")
    return _pair(
        ctx, record, _simplify(chosen[:-1]), chosen[-1]["content"], rejected[-1]["content"]
    )


# --- UltraFeedback ---------------------------------------------------------------------------
# Raw rows: https://huggingface.co/datasets/openbmb/UltraFeedback (instruction, completions with
# model, response, overall_score, fine-grained_score, annotations.<aspect>.Rating as text, "N/A"
# where an aspect does not apply). Binarized rows:
# https://huggingface.co/datasets/HuggingFaceH4/ultrafeedback_binarized (prompt, prompt_id, not
# unique; chosen/rejected/messages as whole conversations; score_chosen/score_rejected).


def _uf_rating(value):
    """An aspect's Rating: "4" → 4, "N/A" → None (the aspect does not apply); other text kept."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, str) and value.strip().upper() == "N/A":
        return None
    return value


def _uf_number(ctx: Context, value, where: str) -> float:
    if isinstance(value, str):  # some mirrors write the scores as text
        try:
            value = float(value)
        except ValueError:
            ctx.fail(where, f"expected a number, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        ctx.fail(where, "expected a number")
    return value


def ultrafeedback_item(line: int, record) -> Item:
    record = _object(line, record)
    if "completions" not in record and ("chosen" in record or "rejected" in record):
        return _ultrafeedback_binarized(line, record)
    ctx = Context(line)
    prompt = ctx.text(record, "instruction" if "instruction" in record else "prompt")
    completions = record.get("completions")
    if not isinstance(completions, list):
        ctx.fail("completions", "expected a list of rated completions")
    if not completions:
        return Item(
            "prompt",
            line,
            prompt=prompt,
            notices=[
                Notice(line, NO_COMPLETIONS, "completions", "no completions: imported as a prompt")
            ],
            **_common(record, ctx),
        )
    responses, scores, meta = [], [], []
    for i, completion in enumerate(completions):
        where = f"completions[{i}]"
        if not isinstance(completion, dict):
            ctx.fail(where, "expected an object")
        text = completion.get("response")
        if not isinstance(text, str):
            ctx.fail(f"{where}.response", "expected text")
        name = "overall_score" if "overall_score" in completion else "fine-grained_score"
        score = _uf_number(ctx, completion.get(name), f"{where}.{name}")
        info = {"model": completion.get("model", ""), "score": score}
        if "fine-grained_score" in completion and name != "fine-grained_score":
            fine = completion["fine-grained_score"]
            info["fine_grained_score"] = None if fine == "N/A" else fine
        aspects = completion.get("annotations")
        if isinstance(aspects, dict):
            info["ratings"] = {
                aspect: _uf_rating(value.get("Rating")) if isinstance(value, dict) else None
                for aspect, value in aspects.items()
            }
        responses.append(text)
        scores.append(float(score))
        meta.append(info)
    common = _common(record, ctx)
    metadata = {"source": record["source"]} if record.get("source") else {}
    if len(responses) == 1:
        return Item(
            "responses",
            line,
            prompt=prompt,
            responses=responses,
            response_metadata=meta,
            response_origin="model",
            metadata=metadata,
            notices=[
                Notice(line, SINGLE_COMPLETION, "completions",
                       "one rated completion, no pair: imported as the prompt and its rated response")
            ],
            **common,
        )  # fmt: skip
    # Best first; completions with the same overall score share a group (a tie, unordered).
    order = sorted(set(scores), reverse=True)
    ranking = [[i for i, s in enumerate(scores) if s == level] for level in order]
    return Item(
        "preference",
        line,
        prompt=prompt,
        responses=responses,
        judgments=[{"ranking": ranking, "strength": 1, "scores": scores}],
        response_metadata=meta,
        response_origin="model",
        metadata=metadata,
        **common,
    )


def _ultrafeedback_binarized(line: int, record: dict) -> Item:
    ctx = Context(line)
    prompt = ctx.text(record, "prompt")
    for name in ("chosen", "rejected"):
        if record.get(name) is None:
            ctx.fail(name, "missing: a preference row needs both chosen and rejected")
    replies, meta = [], []
    for name in ("chosen", "rejected"):
        value = record[name]
        if isinstance(value, list):
            # The whole conversation, the user's turn repeated: the reply is its last turn.
            messages = ctx.messages(value, name)
            if messages[-1]["role"] != "assistant":
                ctx.fail(
                    f"{name}[{len(messages) - 1}].role", "the last turn must be the assistant's"
                )
            reply = messages[-1]["content"]
        else:
            reply = _reply(ctx, value, name)
        info = {}
        if record.get(f"score_{name}") is not None:
            info["score"] = _uf_number(ctx, record[f"score_{name}"], f"score_{name}")
        replies.append(reply)
        meta.append(info)
    item = _pair(ctx, record, prompt, *replies)
    item.response_metadata = meta
    item.response_origin = "model"
    if record.get("prompt_id"):
        item.metadata = {"prompt_id": str(record["prompt_id"])}
    return item


# --- Label Studio ----------------------------------------------------------------------------


def _ls_text(value) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for key in ("text", "html", "body", "value"):
            if isinstance(value.get(key), str):
                return value[key]
    return None


def label_studio_item(line: int, record) -> Item | list[Notice]:
    """A task of a Label Studio JSON export
    (https://labelstud.io/guide/export#Label-Studio-JSON-format-of-annotated-tasks): one judgment
    per annotator's pairwise or ranker result; a `ground_truth` annotation makes the task a gold
    task with its answer; `predictions` are a model's suggestions, kept as the prompt's metadata
    and never a judgment; cancelled and empty annotations and unannotated tasks (exported with
    `download_all_tasks=true`) are counted and skipped."""
    record = _object(line, record)
    ctx = Context(line)
    data = record.get("data")
    if not isinstance(data, dict):
        ctx.fail("data", "expected the task's data object")
    prompt_key = next((k for k in ("prompt", "question", "instruction", "text") if k in data), None)
    if prompt_key is None:
        ctx.fail("data.prompt", "missing (looked for prompt, question, instruction, text)")
    prompt = data[prompt_key]
    if not isinstance(prompt, str) or not prompt.strip():
        ctx.fail(f"data.{prompt_key}", "expected text")
    name = "annotations" if "annotations" in record else "completions"
    annotations = record.get(name) or []
    if not isinstance(annotations, list):
        ctx.fail(name, "expected a list")
    responses: list[str] = []
    index: dict[str, int] = {}

    def response_for(key: str, text: str) -> int:
        if key not in index:
            index[key] = len(responses)
            responses.append(text)
        return index[key]

    notices: list[Notice] = []
    metadata: dict = {}
    predictions = record.get("predictions")
    if predictions:
        if not isinstance(predictions, list):
            ctx.fail("predictions", "expected a list")
        metadata["label_studio"] = {"predictions": predictions}
        notices.append(
            Notice(line, PREDICTIONS, "predictions",
                   f"{len(predictions)} model prediction(s) kept as the prompt's metadata, "
                   "never as judgments")
        )  # fmt: skip
    if not annotations:
        return [*notices, Notice(line, UNANNOTATED, name, "a task nobody annotated; skipped")]
    judgments, gold = [], None
    for a, annotation in enumerate(annotations):
        where = f"{name}[{a}]"
        if not isinstance(annotation, dict):
            ctx.fail(where, "expected an object")
        if annotation.get("was_cancelled"):
            notices.append(Notice(line, CANCELLED, where, "cancelled by its annotator; skipped"))
            continue
        results = annotation.get("result")
        if results is None:
            results = []
        if not isinstance(results, list):
            ctx.fail(f"{where}.result", "expected a list")
        rankings = [
            ranking
            for r, result in enumerate(results)
            if (ranking := _ls_ranking(ctx, data, result, f"{where}.result[{r}]", response_for))
        ]
        if not rankings:
            notices.append(
                Notice(line, EMPTY_ANNOTATION, f"{where}.result",
                       "no pairwise or ranker result; skipped")
            )  # fmt: skip
            continue
        for ranking in rankings:
            if annotation.get("ground_truth") and gold is None:
                gold = ranking
            else:
                judgments.append(_ls_judgment(annotation, ranking))
    if gold is None and not judgments:
        return notices
    item = Item(
        "preference",
        line,
        prompt=prompt,
        responses=responses,
        judgments=judgments,
        original_id=str(record.get("id", "")),
        metadata=metadata,
        notices=notices,
    )
    if gold is not None:
        if len(responses) == 2:
            item.gold_answer = {"winner": gold[0][0] if len(gold) == 2 else None}
        else:
            item.gold_answer = {"ranking": gold}
        if judgments:
            item.notices.append(
                Notice(line, GOLD_OTHERS, name,
                       f"{len(judgments)} other annotation(s) of a ground-truth task: a gold task "
                       "is answered by the labelers it is served to, not by imported judgments")
            )  # fmt: skip
        item.judgments = []
    return item


def _ls_ranking(ctx: Context, data: dict, result, where: str, response_for) -> list | None:
    """A result's ranking of the task's responses (groups best first), or None when it is
    another kind of result (a choice, a text area)."""
    kind = result.get("type") if isinstance(result, dict) else None
    value = result.get("value") if isinstance(result, dict) else None
    if kind == "pairwise":
        names = (result.get("to_name") or "").split(",")
        if len(names) != 2:
            names = ["answer1", "answer2"]
        texts = [data.get(n.strip()) for n in names]
        for n, t in zip(names, texts, strict=True):
            if _ls_text(t) is None:
                ctx.fail(f"data.{n.strip()}", "expected the text of a compared answer")
        ids = [response_for(n.strip(), _ls_text(t)) for n, t in zip(names, texts, strict=True)]
        selected = (value or {}).get("selected")
        if selected not in ("left", "right"):
            ctx.fail(f"{where}.value.selected", "expected 'left' or 'right'")
        winner, loser = (ids[0], ids[1]) if selected == "left" else (ids[1], ids[0])
        return [[winner], [loser]]
    if kind == "ranker":
        buckets = (value or {}).get("ranker")
        if not isinstance(buckets, dict) or not buckets:
            ctx.fail(f"{where}.value.ranker", "expected {bucket: [item ids]}")
        items = _ls_items(ctx, data)
        groups = []
        for bucket, ids in buckets.items():
            if not isinstance(ids, list):
                ctx.fail(f"{where}.value.ranker.{bucket}", "expected a list of item ids")
            for item_id in ids:
                if str(item_id) not in items:
                    ctx.fail(f"{where}.value.ranker.{bucket}", f"unknown item id {item_id!r}")
            members = [response_for(str(i), items[str(i)]) for i in ids]
            if len(buckets) == 1:
                groups.extend([m] for m in members)
            elif members:
                groups.append(members)
        return groups if len(groups) >= 2 else None
    return None


def _ls_items(ctx: Context, data: dict) -> dict[str, str]:
    for key in ("items", "answers", "responses", "candidates"):
        if isinstance(data.get(key), list):
            items = {}
            for i, item in enumerate(data[key]):
                if not isinstance(item, dict) or "id" not in item or _ls_text(item) is None:
                    ctx.fail(f"data.{key}[{i}]", "expected {id, text}")
                items[str(item["id"])] = _ls_text(item)
            return items
    ctx.fail("data.items", "missing the list of ranked items")


def _ls_judgment(annotation: dict, ranking) -> dict:
    return {
        "ranking": ranking,
        "strength": 1,
        "original_id": str(annotation.get("id", "")),
        "completed_by": annotation.get("completed_by"),
    }


# --- OpenAssistant ---------------------------------------------------------------------------
# https://huggingface.co/datasets/OpenAssistant/oasst2 (and oasst1): message trees, or flat
# messages with message_id/parent_id/message_tree_id; replies ranked among siblings by `rank`;
# each message carries its review (`review_count`, `review_result`), `deleted`, quality
# `labels` ({name, value, count}), `synthetic`, `model_name` and `emojis`, kept as metadata.
# Deleted messages, and the replies below them, are skipped and counted.

OASST_ROLES = {"prompter": "user", "assistant": "assistant"}
OASST_LABELS = (
    "review_count",
    "review_result",
    "deleted",
    "labels",
    "synthetic",
    "model_name",
    "emojis",
)


def _oasst_labels(message: dict) -> dict:
    return {k: message[k] for k in OASST_LABELS if message.get(k) is not None}


def oasst_items(records: Iterator[tuple[int, object]]) -> Iterator[Item | RowError | Notice]:
    """Trees (`{"prompt": {... "replies": [...]}}`) or flat message rows grouped by tree."""
    pending: list[tuple[int, dict]] = []
    tree_id = None
    for line, record in records:
        if isinstance(record, RowError):
            yield record
            continue
        if not isinstance(record, dict):
            yield RowError(line, "", f"expected a JSON object, got {type(record).__name__}")
            continue
        if "prompt" in record and isinstance(record["prompt"], dict):
            try:
                yield from list(_oasst_walk(line, record["prompt"], [], "prompt"))
            except RowError as error:
                yield error
            continue
        if record.get("message_tree_id") != tree_id and pending:
            yield from _oasst_flat(pending)
            pending = []
        tree_id = record.get("message_tree_id")
        pending.append((line, record))
    if pending:
        yield from _oasst_flat(pending)


def _oasst_message(ctx: Context, message: dict, where: str) -> dict:
    if not isinstance(message, dict):
        ctx.fail(where, "expected a message object")
    role = OASST_ROLES.get(message.get("role"))
    if role is None:
        ctx.fail(
            f"{where}.role", f"unknown role {message.get('role')!r}; expected prompter or assistant"
        )
    if not isinstance(message.get("text"), str):
        ctx.fail(f"{where}.text", "expected text")
    return {"role": role, "content": message["text"]}


def _oasst_count(node: dict) -> int:
    replies = node.get("replies") if isinstance(node, dict) else None
    return sum(1 + _oasst_count(r) for r in replies) if isinstance(replies, list) else 0


def _oasst_deleted(line: int, where: str, below: int) -> Notice:
    more = f" and the {below} repl{'y' if below == 1 else 'ies'} below it" if below else ""
    return Notice(line, DELETED, where, f"a deleted message{more}; skipped")


def _oasst_walk(line: int, node: dict, history: list, where: str) -> Iterator[Item | Notice]:
    ctx = Context(line)
    turn = _oasst_message(ctx, node, where)
    if node.get("deleted"):
        yield _oasst_deleted(line, where, _oasst_count(node))
        return
    conversation = history + [turn]
    replies = node.get("replies") or []
    if not isinstance(replies, list):
        ctx.fail(f"{where}.replies", "expected a list")
    checked = [(r, _oasst_message(ctx, r, f"{where}.replies[{i}]")) for i, r in enumerate(replies)]
    live = [r for r, _ in checked if not r.get("deleted")]
    if turn["role"] == "user" and live:
        yield from _oasst_node_items(line, node, conversation, live)
    for i, (reply, _) in enumerate(checked):
        yield from _oasst_walk(line, reply, conversation, f"{where}.replies[{i}]")


def _oasst_node_items(
    line: int, node: dict, conversation: list, replies: list[dict]
) -> Iterator[Item]:
    prompt = _simplify(conversation)
    language = (node.get("lang") or "")[:16]
    labels = {"prompt": _oasst_labels(node)} if _oasst_labels(node) else {}
    ranked = [r for r in replies if isinstance(r.get("rank"), int)]
    if len(ranked) >= 2:
        ranked.sort(key=lambda r: r["rank"])
        chosen = ranked
        item = Item(
            "preference",
            line,
            prompt=prompt,
            responses=[r["text"] for r in ranked],
            judgments=[{"ranking": [[i] for i in range(len(ranked))], "strength": 1}],
            response_metadata=[
                {"oasst": _oasst_labels(r)} if _oasst_labels(r) else {} for r in ranked
            ],
            language=language,
            original_id=str(node.get("message_id", "")),
        )
    else:
        chosen = [ranked[0] if ranked else replies[0]]
        item = Item(
            "demonstration",
            line,
            prompt=prompt,
            responses=[chosen[0]["text"]],
            language=language,
            original_id=str(chosen[0].get("message_id", "")),
        )
    replies_labels = {
        str(r.get("message_id", i)): _oasst_labels(r)
        for i, r in enumerate(chosen)
        if _oasst_labels(r)
    }
    if replies_labels:
        labels["replies"] = replies_labels
    if labels:
        item.metadata = {"oasst": labels}
    yield item


def _oasst_flat(rows: list[tuple[int, dict]]) -> Iterator[Item | RowError | Notice]:
    by_id = {}
    children: dict[str | None, list] = {}
    for line, row in rows:
        ctx = Context(line)
        try:
            _oasst_message(ctx, row, "")
            if not row.get("message_id"):
                ctx.fail("message_id", "missing")
        except RowError as error:
            yield error
            return
        by_id[row["message_id"]] = (line, row)
    gone: set = set()  # deleted messages and every message below one

    def deleted(message_id) -> bool:
        seen = []
        cursor = message_id
        while cursor in by_id and cursor not in gone:
            row = by_id[cursor][1]
            if row.get("deleted"):
                gone.update(seen + [cursor])
                return True
            seen.append(cursor)
            cursor = row.get("parent_id")
        if cursor in gone:
            gone.update(seen)
            return True
        return False

    for line, row in rows:
        message_id = row["message_id"]
        if deleted(message_id):
            if row.get("deleted"):
                yield _oasst_deleted(line, "deleted", 0)
            else:
                yield Notice(line, DELETED, "parent_id", "a reply below a deleted message; skipped")
            continue
        children.setdefault(row.get("parent_id"), []).append(row)
    for message_id, (line, row) in by_id.items():
        if message_id in gone or row["role"] != "prompter" or message_id not in children:
            continue
        path = []
        cursor = row
        while cursor is not None:
            path.append(_oasst_message(Context(line), cursor, ""))
            parent = cursor.get("parent_id")
            cursor = by_id[parent][1] if parent in by_id else None
            if parent and parent not in by_id:
                yield RowError(line, "parent_id", f"parent {parent!r} is not in the file")
                return
        yield from _oasst_node_items(line, row, list(reversed(path)), children[message_id])


ITEMIZERS = {
    "prompts-jsonl": prompts_item,
    "prompts-csv": prompts_item,
    "prompts-parquet": prompts_item,
    "trl": trl_item,
    "alpaca": alpaca_item,
    "sharegpt": sharegpt_item,
    "hh-rlhf": hh_item,
    "ultrafeedback": ultrafeedback_item,
    "label-studio": label_studio_item,
}


def detect(record) -> str | None:
    """The format a first record looks like, or None."""
    if not isinstance(record, dict):
        return None
    keys = set(record)
    if isinstance(record.get("data"), dict) and keys & {
        "annotations",
        "completions",
        "predictions",
    }:
        return "label-studio"
    if "score_chosen" in keys or ("prompt_id" in keys and "chosen" in keys):
        return "ultrafeedback"  # binarized
    if "completions" in keys and ("instruction" in keys or "prompt" in keys):
        return "ultrafeedback"
    if "message_tree_id" in keys or ("prompt" in keys and isinstance(record["prompt"], dict)):
        return "oasst"
    if "conversations" in keys:
        return "sharegpt"
    if "instruction" in keys:
        return "alpaca"
    if {"chosen", "rejected"} <= keys and "prompt" not in keys:
        chosen = record["chosen"]
        if isinstance(chosen, str) and chosen.startswith(HUMAN):
            return "hh-rlhf"
        return "trl"
    if keys & {"text", "prompt", "messages", "completion", "chosen"}:
        return "trl"
    return None


def _shown_key(key: str) -> str:
    """A key as it can be printed: a lone surrogate in it as its escape."""
    return key.encode("utf-8", "backslashreplace").decode("utf-8")


def checked_text(records: Iterator[tuple[int, object]]) -> Iterator[tuple[int, object]]:
    """Refuse, naming its field, any value no database can store as text: a string holding NUL
    (the text rule of `annotation.rules`), a lone surrogate (JSON's `\\ud800` escape spells
    one; UTF-8 cannot hold it), and NaN or Infinity (not JSON, RFC 8259 section 6)."""

    def bad(value: str) -> str | None:
        if type(value) is NotJson:
            return f"{value} is not a JSON number (RFC 8259); write a number or null"
        if rules.NUL in value:
            return rules.NUL_REFUSED
        if not value.isascii():
            # Encoding is the cheapest test (a regex search for U+D800-U+DFFF takes 5 times as long).
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as error:
                return (
                    f"a lone surrogate (\\u{ord(value[error.start]):04x}) at character "
                    f"{error.start} is not text (it cannot be UTF-8)"
                )
        return None

    def find(value, path: str) -> tuple[str, str] | None:
        if isinstance(value, str):
            return (path, message) if (message := bad(value)) is not None else None
        if isinstance(value, dict):
            items = value.items()
        elif isinstance(value, list):
            items = enumerate(value)
        else:
            return None
        for key, child in items:
            if isinstance(key, int):
                key_path = f"{path}[{key}]"
            else:
                key_path = f"{path}.{_shown_key(key)}" if path else _shown_key(key)
                if (message := bad(key)) is not None:
                    return key_path, "a key: " + message
            if (found := find(child, key_path)) is not None:
                return found
        return None

    for line, record in records:
        if not isinstance(record, RowError) and (found := find(record, "")) is not None:
            record = RowError(line, *found)
        yield line, record


# The kind of gold task a row makes, by its number of responses (as an imported preference is a
# compare task with two responses and a rank task with more).
GOLD_KINDS_BY_SIZE = {1: "rate", 2: "compare"}


def gold_kind(item: Item) -> str:
    return GOLD_KINDS_BY_SIZE.get(len(item.responses), "rank")


def with_gold(item: Item, record) -> Item:
    """The row's `gold_answer`, if it has one, checked for what the row alone can tell: that
    the row has responses to judge, and that every response the answer names is one of them
    (`winner`: an index or null for a tie; `ranking`: groups of indexes, best first). The rest
    of the answer is checked when written, by the rules of its kind (`gold.gold_answer_check`)."""
    if not isinstance(record, dict) or record.get("gold_answer") is None:
        return item
    answer = record["gold_answer"]
    ctx = Context(item.line)
    if not isinstance(answer, dict) or not answer:
        ctx.fail("gold_answer", "expected an object: {winner}, {ranking} or {score}")
    if item.kind not in ("demonstration", "preference", "responses"):
        ctx.fail("gold_answer", f"a gold task needs responses to judge; this row is a {item.kind}")
    size = len(item.responses)

    def index(value, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < size:
            ctx.fail(
                where, f"expected the index of one of the row's {size} responses (0–{size - 1})"
            )
        return value

    kind = gold_kind(item)
    if kind == "compare" and answer.get("winner") is not None:
        index(answer["winner"], "gold_answer.winner")
    if kind == "rank":
        ranking = answer.get("ranking")
        if not isinstance(ranking, list):
            ctx.fail("gold_answer.ranking", "expected a list of response indexes, best first")
        for i, group in enumerate(ranking):
            for member in group if isinstance(group, list) else [group]:
                index(member, f"gold_answer.ranking[{i}]")
    item.gold_answer = answer
    item.judgments = []
    return item


def items(format: str, records: Iterator[tuple[int, object]]) -> Iterator[Item | RowError | Notice]:
    """The file's items, its bad records as RowErrors and what it skipped as Notices."""
    records = checked_text(records)
    if format == "oasst":
        for item in oasst_items(records):
            if isinstance(item, RowError | Notice):
                yield item
                continue
            try:
                yield check(item)
            except RowError as error:
                yield error
        return
    itemize = ITEMIZERS[format]
    for line, record in records:
        if isinstance(record, RowError):
            yield record
            continue
        try:
            item = itemize(line, record)
            if isinstance(item, Notice):
                yield item
            elif isinstance(item, list):
                yield from item
            else:
                yield check(with_gold(item, record))
        except RowError as error:
            yield error


def check(item: Item) -> Item:
    """Checks every format shares: text sizes; and identical responses, which are one response:
    a pair of them is a tie with nothing to learn (imported as the prompt and its response)."""
    texts = [(item.prompt, "prompt")] + [
        (r, f"responses[{i}]") for i, r in enumerate(item.responses)
    ]
    for text, where in texts:
        if isinstance(text, str) and (refusal := rules.text_refusal(text)) is not None:
            raise RowError(item.line, where, refusal)
    if item.kind == "preference" and len(set(item.responses)) != len(item.responses):
        _merge_identical(item)
    return item


def _merge_identical(item: Item) -> None:
    """Responses with the same text are one response: the later ones are dropped from the
    row and from its rankings; a ranking left with a single response orders nothing."""
    first: dict[str, int] = {}
    keep = []
    for i, text in enumerate(item.responses):
        if text not in first:
            first[text] = len(keep)
            keep.append(i)
    new_index = {i: first[item.responses[i]] for i in range(len(item.responses))}
    judgments = []
    for judgment in item.judgments:
        placed: set[int] = set()
        ranking = []
        for group in judgment["ranking"]:
            members = [new_index[i] for i in group if new_index[i] not in placed]
            placed.update(members)
            if members:
                ranking.append(members)
        if sum(len(g) for g in ranking) >= 2:
            judgments.append({**judgment, "ranking": ranking})
    item.responses = [item.responses[i] for i in keep]
    item.response_metadata = [
        item.response_metadata[i] for i in keep if i < len(item.response_metadata)
    ]
    item.judgments = judgments
    if len(keep) == 1:
        item.kind = "responses"
        item.notices.append(
            Notice(item.line, TIE, "responses",
                   "both sides are the same reply: a tie with nothing to learn from; imported "
                   "as the prompt and its response, no pair")
        )  # fmt: skip
    else:
        item.notices.append(
            Notice(item.line, "identical responses", "responses",
                   "responses with the same text were merged into one")
        )  # fmt: skip

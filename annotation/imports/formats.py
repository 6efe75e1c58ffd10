"""Turn records of each supported format into normalized import items.

An item is one of: a document (pretraining text), a prompt, a demonstration (prompt + reply) or
a preference (prompt + K responses + one or more judgments, each a ranking best first with
ties as groups). Text is passed through exactly as read: no trimming, no normalization.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from annotation import rules
from annotation.imports.errors import RowError

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
    kind: str  # document | prompt | demonstration | preference
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

    def messages(self, value, name: str, *, roles: dict | None = None) -> list[dict]:
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
            if role not in ROLES:
                self.fail(
                    f"{where}.{role_key}",
                    f"unknown role {role!r}; expected one of {', '.join(ROLES)}",
                )
            content = message.get(content_key)
            if not isinstance(content, str):
                self.fail(f"{where}.{content_key}", f"expected text, got {type(content).__name__}")
            out.append({"role": role, "content": content})
        return out


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


def trl_item(line: int, record) -> Item:
    record = _object(line, record)
    ctx = Context(line)
    keys = set(record)
    if {"chosen", "rejected"} <= keys:
        if "prompt" in keys:
            prompt = _prompt_value(ctx, record["prompt"], "prompt")
            chosen = _reply(ctx, record["chosen"], "chosen")
            rejected = _reply(ctx, record["rejected"], "rejected")
        else:
            prompt, chosen, rejected = _implicit_prompt(ctx, record["chosen"], record["rejected"])
        return _pair(ctx, record, prompt, chosen, rejected)
    if "completion" in keys:
        prompt = _prompt_value(ctx, record.get("prompt"), "prompt")
        completion = _reply(ctx, record["completion"], "completion")
        return Item(
            "demonstration", line, prompt=prompt, responses=[completion], **_common(record, ctx)
        )
    if "messages" in keys:
        messages = ctx.messages(record["messages"], "messages")
        if messages[-1]["role"] == "assistant" and len(messages) > 1:
            prompt = messages[:-1]
            if len(prompt) == 1 and prompt[0]["role"] == "user":
                prompt = prompt[0]["content"]
            return Item(
                "demonstration",
                line,
                prompt=prompt,
                responses=[messages[-1]["content"]],
                **_common(record, ctx),
            )
        if messages[-1]["role"] != "user":
            ctx.fail("messages", "the last turn must be the assistant's reply or the user's prompt")
        return Item("prompt", line, prompt=messages, **_common(record, ctx))
    if "text" in keys:
        return Item("document", line, prompt=ctx.text(record, "text"), **_common(record, ctx))
    if "prompt" in keys:
        prompt = _prompt_value(ctx, record["prompt"], "prompt")
        return Item("prompt", line, prompt=prompt, **_common(record, ctx))
    ctx.fail(
        "",
        f"columns {sorted(keys)} match no TRL format: expected text, prompt/completion, messages, "
        "prompt/chosen/rejected or chosen/rejected",
    )


def _implicit_prompt(ctx: Context, chosen, rejected):
    """TRL's implicit prompt: the shared beginning of chosen and rejected."""
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
        if len(chosen) != i + 1 or len(rejected) != i + 1:
            ctx.fail(
                "chosen", "after the shared prefix each side must have exactly one assistant reply"
            )
        for name, side in (("chosen", chosen), ("rejected", rejected)):
            if side[-1]["role"] != "assistant":
                ctx.fail(f"{name}[{i}].role", "the reply must be the assistant's")
        prompt = prefix[0]["content"] if len(prefix) == 1 else prefix
        return prompt, chosen[-1]["content"], rejected[-1]["content"]
    if isinstance(chosen, str) and isinstance(rejected, str):
        i = 0
        while i < min(len(chosen), len(rejected)) and chosen[i] == rejected[i]:
            i += 1
        if i and chosen[i - 1] == " ":
            i -= 1  # as TRL does: the space belongs to the replies
        if not chosen[:i].strip():
            ctx.fail("chosen", "chosen and rejected share no prompt text; add a 'prompt' column")
        return chosen[:i], chosen[i:], rejected[i:]
    ctx.fail("rejected", "chosen and rejected must both be text or both be lists of messages")


# --- Alpaca and ShareGPT (as LLaMA-Factory reads them) --------------------------------------


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
    if "chosen" in record and "rejected" in record:
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

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


def _hh_turns(ctx: Context, text, name: str) -> list[dict]:
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


def ultrafeedback_item(line: int, record) -> Item:
    record = _object(line, record)
    ctx = Context(line)
    prompt = ctx.text(record, "instruction" if "instruction" in record else "prompt")
    completions = record.get("completions")
    if not isinstance(completions, list) or len(completions) < 2:
        ctx.fail("completions", "expected a list of at least two rated completions")
    responses, scores, meta = [], [], []
    for i, completion in enumerate(completions):
        where = f"completions[{i}]"
        if not isinstance(completion, dict):
            ctx.fail(where, "expected an object")
        text = completion.get("response")
        if not isinstance(text, str):
            ctx.fail(f"{where}.response", "expected text")
        score = completion.get("overall_score", completion.get("fine-grained_score"))
        if isinstance(score, bool) or not isinstance(score, int | float):
            ctx.fail(f"{where}.overall_score", "expected a number")
        responses.append(text)
        scores.append(float(score))
        meta.append({"model": completion.get("model", ""), "score": score})
    order = sorted(set(scores), reverse=True)
    ranking = [[i for i, s in enumerate(scores) if s == level] for level in order]
    item = Item(
        "preference",
        line,
        prompt=prompt,
        responses=responses,
        judgments=[{"ranking": ranking, "strength": 1, "scores": scores}],
        response_metadata=meta,
        response_origin="model",
        **_common(record, ctx),
    )
    item.metadata = {"source": record.get("source", "")} if record.get("source") else {}
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


def label_studio_item(line: int, record) -> Item:
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
    annotations = record.get("annotations") or record.get("completions") or []
    if not isinstance(annotations, list):
        ctx.fail("annotations", "expected a list")
    responses: list[str] = []
    index: dict[str, int] = {}

    def response_for(key: str, text: str) -> int:
        if key not in index:
            index[key] = len(responses)
            responses.append(text)
        return index[key]

    judgments = []
    for a, annotation in enumerate(annotations):
        if not isinstance(annotation, dict) or annotation.get("was_cancelled"):
            continue
        for r, result in enumerate(annotation.get("result") or []):
            where = f"annotations[{a}].result[{r}]"
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
                ids = [
                    response_for(n.strip(), _ls_text(t)) for n, t in zip(names, texts, strict=True)
                ]
                selected = (value or {}).get("selected")
                if selected not in ("left", "right"):
                    ctx.fail(f"{where}.value.selected", "expected 'left' or 'right'")
                winner, loser = (ids[0], ids[1]) if selected == "left" else (ids[1], ids[0])
                judgments.append(_ls_judgment(annotation, [[winner], [loser]]))
            elif kind == "ranker":
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
                            ctx.fail(
                                f"{where}.value.ranker.{bucket}", f"unknown item id {item_id!r}"
                            )
                    members = [response_for(str(i), items[str(i)]) for i in ids]
                    if len(buckets) == 1:
                        groups.extend([m] for m in members)
                    elif members:
                        groups.append(members)
                if len(groups) >= 2:
                    judgments.append(_ls_judgment(annotation, groups))
    if not judgments:
        ctx.fail("annotations", "no pairwise or ranker result to import")
    return Item(
        "preference",
        line,
        prompt=prompt,
        responses=responses,
        judgments=judgments,
        original_id=str(record.get("id", "")),
    )


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

OASST_ROLES = {"prompter": "user", "assistant": "assistant"}


def oasst_items(records: Iterator[tuple[int, object]]) -> Iterator[Item | RowError]:
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
                yield from _oasst_walk(line, record["prompt"], [], "prompt")
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


def _oasst_walk(line: int, node: dict, history: list, where: str) -> Iterator[Item]:
    ctx = Context(line)
    turn = _oasst_message(ctx, node, where)
    conversation = history + [turn]
    replies = node.get("replies") or []
    if not isinstance(replies, list):
        ctx.fail(f"{where}.replies", "expected a list")
    checked = [(r, _oasst_message(ctx, r, f"{where}.replies[{i}]")) for i, r in enumerate(replies)]
    if turn["role"] == "user" and checked:
        yield from _oasst_node_items(line, node, conversation, [r for r, _ in checked])
    for i, (reply, _) in enumerate(checked):
        yield from _oasst_walk(line, reply, conversation, f"{where}.replies[{i}]")


def _oasst_node_items(
    line: int, node: dict, conversation: list, replies: list[dict]
) -> Iterator[Item]:
    prompt = _simplify(conversation)
    language = (node.get("lang") or "")[:16]
    ranked = [r for r in replies if isinstance(r.get("rank"), int)]
    if len(ranked) >= 2:
        ranked.sort(key=lambda r: r["rank"])
        yield Item(
            "preference",
            line,
            prompt=prompt,
            responses=[r["text"] for r in ranked],
            judgments=[{"ranking": [[i] for i in range(len(ranked))], "strength": 1}],
            language=language,
            original_id=str(node.get("message_id", "")),
        )
    else:
        best = ranked[0] if ranked else replies[0]
        yield Item(
            "demonstration",
            line,
            prompt=prompt,
            responses=[best["text"]],
            language=language,
            original_id=str(best.get("message_id", "")),
        )


def _oasst_flat(rows: list[tuple[int, dict]]) -> Iterator[Item | RowError]:
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
        children.setdefault(row.get("parent_id"), []).append(row)
    for message_id, (line, row) in by_id.items():
        if row["role"] != "prompter" or message_id not in children:
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
    if isinstance(record.get("data"), dict) and ("annotations" in keys or "completions" in keys):
        return "label-studio"
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


def nul_free(records: Iterator[tuple[int, object]]) -> Iterator[tuple[int, object]]:
    """Refuse any string holding NUL, naming its field (the text rule of `annotation.rules`)."""

    def find(value, path: str) -> str | None:
        if isinstance(value, str):
            return path if rules.NUL in value else None
        if isinstance(value, dict):
            items = value.items()
        elif isinstance(value, list):
            items = enumerate(value)
        else:
            return None
        for key, child in items:
            key_path = (
                f"{path}[{key}]"
                if isinstance(key, int)
                else (f"{path}.{key}" if path else str(key))
            )
            if (found := find(child, key_path)) is not None:
                return found
        return None

    for line, record in records:
        if not isinstance(record, RowError) and (field := find(record, "")) is not None:
            record = RowError(line, field, rules.NUL_REFUSED)
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
    if item.kind not in ("demonstration", "preference"):
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


def items(format: str, records: Iterator[tuple[int, object]]) -> Iterator[Item | RowError]:
    records = nul_free(records)
    if format == "oasst":
        for item in oasst_items(records):
            if isinstance(item, RowError):
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
            yield check(with_gold(itemize(line, record), record))
        except RowError as error:
            yield error


def check(item: Item) -> Item:
    """Checks every format shares: text sizes and distinct responses."""
    texts = [(item.prompt, "prompt")] + [
        (r, f"responses[{i}]") for i, r in enumerate(item.responses)
    ]
    for text, where in texts:
        if isinstance(text, str) and (refusal := rules.text_refusal(text)) is not None:
            raise RowError(item.line, where, refusal)
    if item.kind == "preference" and len(set(item.responses)) != len(item.responses):
        raise RowError(item.line, "responses", "two responses are identical; nothing to compare")
    return item

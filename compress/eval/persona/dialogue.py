"""Two agents, both played by the model under test, talk about a topic for N turns.

Each turn is generated under the speaking agent's own system prompt (its card, the other agent's
name, the topic, and the instruction to show its personality without naming it):
- with a chat template: the system turn, then the dialogue from that agent's side (its own turns as
  assistant turns, the other's as user turns; the first agent opens after a short user cue). A
  template that refuses a system turn gets the system text at the start of the first user turn;
- without one (a base model): a plain transcript, the system text, then "Name: text" lines, ending in
  "Name:"; the reply is cut at its first line break.
A reply is cleaned: a leading "Name:" is dropped, and it is cut where it starts a new paragraph or
begins to speak for someone ("Other:" at the start of a line).
"""

from __future__ import annotations

import random
import re
from typing import Any

from compress.progress import progress_bar

CHAT, PLAIN = "chat template", "plain transcript"
OPENER = "Please start the conversation with {other} about {topic}. Write your first message."
TRAIT_WORDS = re.compile(r"\b(openness|conscientious(?:ness)?|extraver\w*|extrover\w*|introver\w*|agreeable(?:ness)?"
                         r"|disagreeable|neurotic\w*|big five|personality trait)\b", re.IGNORECASE)


def schedule(cards: list[dict[str, Any]], topics: list[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """`n` dialogues: each round pairs the cards in a seeded shuffle (every card once per round); topics
    are taken in a seeded order, one per dialogue, cycling."""
    order = random.Random(seed).sample(topics, len(topics))
    out: list[dict[str, Any]] = []
    r = 0
    while len(out) < n:
        perm = random.Random(seed + 1 + r).sample(cards, len(cards))
        for j in range(0, len(perm) - 1, 2):
            if len(out) == n:
                break
            out.append({"id": f"d{len(out) + 1:03d}", "topic": order[len(out) % len(order)],
                        "cards": [perm[j], perm[j + 1]]})
        r += 1
    return out


def system_prompt(card: dict[str, Any], other: dict[str, Any], topic: str) -> str:
    return (f"{card['persona']}\n\nYou are chatting with {other['name']} about {topic}. Stay in character as "
            f"{card['name']} for the whole conversation and let your personality show in what you say and how you "
            f"say it, without naming your personality traits. Write only {card['name']}'s next message: one to "
            f"three sentences.")


def chat_messages(setup: dict[str, Any], turns: list[str], speaker: int) -> list[dict[str, str]]:
    """The conversation from `speaker`'s side (speakers alternate, speaker 0 first)."""
    me, other = setup["cards"][speaker], setup["cards"][1 - speaker]
    msgs = [{"role": "system", "content": system_prompt(me, other, setup["topic"]["topic"])}]
    if speaker == 0:
        msgs.append({"role": "user", "content": OPENER.format(other=other["name"], topic=setup["topic"]["topic"])})
    for t, text in enumerate(turns):
        msgs.append({"role": "assistant" if t % 2 == speaker else "user", "content": text})
    return msgs


def plain_prompt(setup: dict[str, Any], turns: list[str], speaker: int) -> str:
    me, other = setup["cards"][speaker], setup["cards"][1 - speaker]
    lines = "".join(f"{setup['cards'][t % 2]['name']}: {text}\n" for t, text in enumerate(turns))
    return f"{system_prompt(me, other, setup['topic']['topic'])}\n\n{lines}{me['name']}:"


def render_chat(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The chat template's text; a template that refuses a system turn gets it inside the first user turn."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - jinja raises its own errors for unsupported roles
        sys_text, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
        rest[0]["content"] = f"{sys_text}\n\n{rest[0]['content']}"
        return tokenizer.apply_chat_template(rest, tokenize=False, add_generation_prompt=True)


def prompt_ids(tokenizer: Any, setup: dict[str, Any], turns: list[str], speaker: int, fmt: str) -> list[int]:
    if fmt == CHAT:
        return tokenizer(render_chat(tokenizer, chat_messages(setup, turns, speaker)), add_special_tokens=False)["input_ids"]
    return tokenizer(plain_prompt(setup, turns, speaker))["input_ids"]


def clean_reply(text: str, me: str, other: str, fmt: str) -> str:
    t = text.strip()
    if t.lower().startswith(f"{me.lower()}:"):
        t = t[len(me) + 1:].strip()
    if fmt == PLAIN:
        t = t.split("\n", 1)[0]
    t = re.split(r"\n\s*\n", t, maxsplit=1)[0]
    t = re.split(rf"\n\s*(?:{re.escape(me)}|{re.escape(other)})\s*:", t, maxsplit=1)[0]
    return t.strip()


def play(model: Any, tokenizer: Any, setups: list[dict[str, Any]], *, turns: int, max_new_tokens: int,
         temperature: float, seed: int, batch_size: int, label: str = "") -> list[dict[str, Any]]:
    """Generate every dialogue turn by turn (all dialogues of a turn in batches); returns
    {id, topic, cards, format, turns: [{speaker, card, text, raw}]} per setup."""
    from compress.model.generate import generate_responses

    fmt = CHAT if getattr(tokenizer, "chat_template", None) else PLAIN
    texts: list[list[str]] = [[] for _ in setups]
    raws: list[list[str]] = [[] for _ in setups]
    with progress_bar(f"{label} role-play".strip(), total=turns * len(setups)) as advance:
        for t in range(turns):
            speaker = t % 2
            prompts = [prompt_ids(tokenizer, s, texts[i], speaker, fmt) for i, s in enumerate(setups)]
            replies = generate_responses(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                         batch_size=batch_size, temperature=temperature, seed=seed + t,
                                         advance=advance)
            for i, (s, raw) in enumerate(zip(setups, replies, strict=True)):
                me, other = s["cards"][speaker]["name"], s["cards"][1 - speaker]["name"]
                raws[i].append(raw)
                texts[i].append(clean_reply(raw, me, other, fmt))
    out = []
    for i, s in enumerate(setups):
        out.append({"id": s["id"], "topic": s["topic"], "cards": s["cards"], "format": fmt,
                    "turns": [{"speaker": s["cards"][t % 2]["name"], "card": s["cards"][t % 2]["id"],
                               "text": texts[i][t], "raw": raws[i][t]} for t in range(turns)]})
    return out


def trait_leaks(dialogue: dict[str, Any]) -> int:
    """Turns that name a Big Five trait outright (the agents were told not to)."""
    return sum(bool(TRAIT_WORDS.search(t["text"])) for t in dialogue["turns"])

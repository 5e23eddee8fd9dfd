"""Persona-fidelity rates from judged dialogues (pure functions).

A unit is one speaker of one dialogue: its card (trait, polarity, level), the option the judge should
pick, the judge's answer on the whole dialogue and on its first half. Rates:
- success = share of units whose answer on the whole dialogue is the card's trait and polarity;
  also by trait, by polarity and by level;
- unclear = share answered "unclear"; unreadable = share with no readable answer (generative judge);
- drift = success on the whole dialogue minus success on its first half (turns 1..N/2): negative
  when the persona fades as the dialogue goes on;
- chance = 1/11, the success of a judge answering uniformly at random;
- top answer = the judge's most frequent answer and the share of units it was given to: a judge that
  gives one answer to (nearly) every question measures only how many speakers hold that persona, and
  then gives every model the same rate on the same cards.
A dialogue passes (enters the PsyPlay-Bench-style corpus) when both speakers are judged right.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from compress.eval.persona.cards import LEVELS, POLARITIES, TRAITS
from compress.eval.persona.judge import LETTERS, UNCLEAR, expected_letter

CHANCE = 1.0 / len(LETTERS)


def units(dialogue: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per speaker of a judged dialogue (`dialogue["verdicts"]` in speaker order)."""
    rows = []
    for s, (card, v) in enumerate(zip(dialogue["cards"], dialogue["verdicts"], strict=True)):
        exp = expected_letter(card)
        rows.append({"unit": f"{dialogue['id']}/{s}", "card": card["id"], "trait": card["trait"],
                     "polarity": card["polarity"], "level": card["level"], "expected": exp,
                     "answer": v["answer"], "answer_half": v["answer_half"],
                     "success": float(v["answer"] == exp), "success_half": float(v["answer_half"] == exp)})
    return rows


def _share(rows: list[dict[str, Any]], key: str) -> float | None:
    return sum(r[key] for r in rows) / len(rows) if rows else None


def _by(rows: list[dict[str, Any]], field: str, values: Iterable[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for v in values:
        sub = [r for r in rows if r[field] == v]
        out[v] = {"n": len(sub), "success": _share(sub, "success")}
    return out


def top_answer(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """{letter, share}: the most frequent readable answer on the whole dialogues (ties: the earlier
    letter) and its share of all units (unreadable ones included); None without a readable answer."""
    answers = [r["answer"] for r in rows if r["answer"] is not None]
    if not answers:
        return None
    letter = max(sorted(set(answers)), key=answers.count)
    return {"letter": letter, "share": answers.count(letter) / len(rows)}


def rates(rows: list[dict[str, Any]]) -> dict[str, Any]:
    full, half = _share(rows, "success"), _share(rows, "success_half")
    return {"n": len(rows), "success": full, "success_half": half,
            "drift": None if full is None or half is None else full - half,
            "unclear": sum(r["answer"] == UNCLEAR for r in rows) / len(rows) if rows else None,
            "unreadable": sum(r["answer"] is None for r in rows) / len(rows) if rows else None,
            "chance": CHANCE, "by_trait": _by(rows, "trait", TRAITS), "by_polarity": _by(rows, "polarity", POLARITIES),
            "by_level": _by(rows, "level", LEVELS), "top_answer": top_answer(rows)}


def passes(dialogue: dict[str, Any]) -> bool:
    return all(r["success"] == 1.0 for r in units(dialogue))

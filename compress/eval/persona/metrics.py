"""Persona-fidelity rates from judged dialogues (pure functions).

A unit is one speaker of one dialogue: its card (trait, polarity, level), the option the judge should
pick, the judge's answer on the whole dialogue and on its first half. Rates:
- success = share of units whose answer on the whole dialogue is the card's trait and polarity;
  also by trait, by polarity and by level;
- unclear = share answered "unclear"; unreadable = share with no readable answer (generative judge);
- drift = success on the whole dialogue minus success on its first half (turns 1..N/2): negative
  when the persona fades as the dialogue goes on;
- chance = 1/11, the success of a judge answering uniformly at random.
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


def rates(rows: list[dict[str, Any]]) -> dict[str, Any]:
    full, half = _share(rows, "success"), _share(rows, "success_half")
    return {"n": len(rows), "success": full, "success_half": half,
            "drift": None if full is None or half is None else full - half,
            "unclear": sum(r["answer"] == UNCLEAR for r in rows) / len(rows) if rows else None,
            "unreadable": sum(r["answer"] is None for r in rows) / len(rows) if rows else None,
            "chance": CHANCE, "by_trait": _by(rows, "trait", TRAITS), "by_polarity": _by(rows, "polarity", POLARITIES),
            "by_level": _by(rows, "level", LEVELS)}


def passes(dialogue: dict[str, Any]) -> bool:
    return all(r["success"] == 1.0 for r in units(dialogue))

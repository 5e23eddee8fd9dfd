"""Reading an answer and scoring it (SocialBench's rules, with the known bugs avoided).

Parsing a generated answer:
1. an explicit answer pattern, strongest first: `[[X]]`; "answer (is) X" / "答案是X"; "selection /
   choice (is) X" / "选择X" / "选X"; a reply that starts with the letter ("C", "C. ...", "(C)", "A, C"),
   with the letters opening its other lines too ("A. x" newline "C. y" reads A, C);
   "option (is) X" / "选项X". Several letters may follow ("A and C", "A、C", "AC");
2. otherwise the official fallback: every capital A-H that stands alone (the character before and
   after is a non-word character, a CJK ideograph, a letter A-D, or the text's start/end), in order of
   appearance, without repeats. Unlike the official regular expression, a match consumes nothing, so
   "A和B" reads as A, B (the official one drops B after the CJK run it consumed).
With the item's option letters and texts given (as `compress eval` does), two more rules apply:
- only the item's own letters count: a letter outside its options is no answer, so "E is not
  listed, so B" reads B (the official rule reads E first and scores 0);
- on a single-choice item a list of options is no choice: a reply that reproduces the whole option
  list of a 3+ option item (a line per option: its letter, then the start of its text) is the prompt
  echoed, and those lines are dropped before parsing ("... She is sad: B" reads B); a reply whose
  lines open with A, B, C, ... in order (3 or more, echoed or made up, as small models write) reads
  nothing (method "none", pattern "list"). The official rule scores the list's first letter, a free
  guess. On a multiple-choice item the same lines may be the answer ("A. x / B. y / C. z" when A-C are
  right), so the official reading stands there.
The method used ("pattern", "fallback" or "none") is recorded per item and its rate reported.

Scoring (`compute_score` of the official `dataset.py`, category passed as a string):
- memory: share of the label keywords found in the lowercased reply;
- single choice (one label): 1 if the first letter read equals the label, else 0;
- multiple choice: 0 if any letter read is outside the label set, else |set(read)| / |set(label)|;
- nothing read (or an empty reply) gives None: left out of the paper's mean, counted as 0 in the
  strict score and as a miss in coverage.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

LETTERS = "ABCDEFGH"
_OPEN = r"[\(\[（【\"'“‘]?"


@lru_cache(maxsize=4)
def _patterns(span: str = "A-H") -> tuple[tuple[str, re.Pattern[str]], ...]:
    """The explicit answer patterns for option letters `span` (a character range such as A-H)."""
    run = rf"[{span}](?:[\s,，、/&]*(?:and|or|和|与|及|或)?[\s,，、/&]*[{span}])*(?![A-Za-z])"
    return (
        ("brackets", re.compile(r"\[\[\s*(" + run + r")\s*\]\]")),
        ("answer", re.compile(r"(?:(?i:\banswers?\b)(?:\s+(?i:is|are|would\s+be|should\s+be|will\s+be))?"
                              r"|答案\s*(?:是|为|应该是|应为)?)\s*[:：]?\s*" + _OPEN + r"(?<![A-Za-z])(" + run + ")")),
        ("selection", re.compile(r"(?:(?i:\b(?:selection|choice|choose|select)\b)(?:\s+(?i:is|would\s+be|should\s+be))?"
                                 r"|(?:选择|应该选|应选|我选|选)\s*(?:是|为)?)\s*[:：]?\s*" + _OPEN
                                 + r"(?<![A-Za-z])(" + run + ")")),
        ("leading", re.compile(r"^[ \t]*" + _OPEN + r"(" + run + r")(?=[ \t]*$|[\)\]）】\"'”’.．、:：,，;；])", re.M)),
        ("option", re.compile(r"(?:(?i:\boptions?\b)(?:\s+(?i:is|would\s+be|should\s+be))?|选项\s*(?:是|为)?)"
                              r"\s*[:：]?\s*" + _OPEN + r"(?<![A-Za-z])(" + run + ")")),
    )


_LETTER = re.compile(r"[A-Z]")
# A capital A-H whose neighbours are each: absent, a non-word char, a CJK ideograph, or a letter A-D.
_FALLBACK = re.compile(r"(?<![^\W\u4e00-\u9fa5A-D])([A-H])(?![^\W\u4e00-\u9fa5A-D])")


@dataclass(frozen=True)
class Parsed:
    letters: tuple[str, ...]
    method: str  # "pattern", "fallback" or "none"
    pattern: str | None = None  # which explicit pattern matched


def _unique(seq: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(seq))


def fallback_letters(text: str) -> tuple[str, ...]:
    """The official rule: standalone capitals A-H in order of appearance, de-duplicated."""
    return _unique(_FALLBACK.findall(text))


def explicit_letters(text: str, span: str = "A-H", allowed: Sequence[str] | None = None,
                     ) -> tuple[tuple[str, ...], str] | None:
    """Letters given by the strongest explicit answer pattern, and its name; None if there is none.
    With `allowed`, other letters are dropped and a pattern left with none gives way to the next."""
    for name, pat in _patterns(span):
        if name == "leading":  # a reply that starts with options: the letters opening each of its lines
            if not pat.match(text.lstrip("\n")):
                continue
            found = _LETTER.findall("".join(m.group(1) for m in pat.finditer(text)))
            found = [x for x in found if allowed is None or x in allowed]
            if found:
                return _unique(found), name
            continue
        for m in pat.finditer(text):  # the first match that names an allowed letter
            found = [x for x in _LETTER.findall(m.group(1)) if allowed is None or x in allowed]
            if found:
                return _unique(found), name
    return None


_OPTION_LINE = re.compile(r"^[ \t]*" + _OPEN + r"([A-H])[\)\]）】\"'”’.．、:：]?[ \t]*(.*?)[ \t]*$")


def strip_echo(text: str, letters: Sequence[str], options: Sequence[str]) -> str:
    """`text` without its option lines when it reproduces every option of a 3+ option item (see above):
    a line is an option's when it opens with the letter and then the option's text (its first 24
    characters, case-insensitive; a shorter option must match whole)."""
    if len(letters) < 3 or len(options) != len(letters):
        return text
    lines, echoed, seen = text.splitlines(), set(), set()
    for i, line in enumerate(lines):
        m = _OPTION_LINE.match(line)
        if m and m.group(1) in letters:
            opt = options[list(letters).index(m.group(1))].strip().lower()[:24]
            if opt and m.group(2).lower().startswith(opt):
                echoed.add(i)
                seen.add(m.group(1))
    if seen != set(letters):
        return text
    return "\n".join(x for i, x in enumerate(lines) if i not in echoed)


def parse_answer(text: str | None, letters: Sequence[str] | None = None,
                 options: Sequence[str] | None = None, single: bool = False) -> Parsed:
    """The letters a reply gives; `letters`/`options`: the item's option letters and texts (optional);
    `single`: the item asks for one option (as its prompt says)."""
    if text is None or not text.strip():
        return Parsed((), "none")
    if single and letters and options:
        text = strip_echo(text, letters, options)
        if not text.strip():
            return Parsed((), "none", "echo")
    hit = explicit_letters(text, allowed=letters or None)
    if hit and single and hit[1] == "leading" and len(hit[0]) >= 3 and hit[0] == tuple(LETTERS[:len(hit[0])]):
        return Parsed((), "none", "list")  # lines opening A, B, C, ...: a list (echoed or made up), no choice
    if hit:
        return Parsed(hit[0], "pattern", hit[1])
    read = tuple(x for x in fallback_letters(text) if not letters or x in letters)
    return Parsed(read, "fallback" if read else "none")


def score_choice(letters: Sequence[str], label: Sequence[str]) -> float | None:
    """1/0 for a single label (first letter), partial credit for several, None when nothing was read."""
    if not letters:
        return None
    if len(label) == 1:
        return 1.0 if letters[0] == label[0] else 0.0
    if any(x not in label for x in letters):
        return 0.0
    return len(set(letters)) / len(set(label))


def score_memory(text: str | None, keywords: Sequence[str]) -> float | None:
    """Share of the keywords found (case-insensitive) in the reply; None for an empty reply."""
    if text is None or not text.strip():
        return None
    low = text.lower()
    return sum(k.lower() in low for k in keywords) / len(keywords)


def select_by_loglik(logliks: Sequence[float], letters: Sequence[str]) -> tuple[str, ...]:
    """The loglik mode's answer, blind to how many answers are right.

    p_i = softmax over the options' log-likelihoods; every option with p_i > 1/k (more likely than a
    uniform guess over the k options) is chosen, most likely first; the most likely option always is.
    A single-answer item is therefore scored on its argmax, as the first letter of a generated answer.
    """
    if len(logliks) != len(letters) or not letters:
        raise ValueError("one log-likelihood per option is needed")
    m = max(logliks)
    w = [math.exp(x - m) for x in logliks]
    z = sum(w)
    order = sorted(range(len(letters)), key=lambda i: (-logliks[i], i))
    chosen = [letters[i] for i in order if w[i] / z > 1.0 / len(letters)]
    return tuple(chosen) or (letters[order[0]],)


def chance(n_options: int) -> float:
    """Expected score of one uniformly random option letter: 1/k for a single label and, under partial
    credit, (|label|/k) * (1/|label|) = 1/k for several."""
    return 1.0 / n_options

"""PsyPlay-style role cards: Big Five trait x polarity x level, generated once and frozen with a hash.

PsyPlay (arXiv 2502.03821) has an LLM write each card; its cards are not public. Here a fixed,
seeded generator composes them from hand-written material: the trait's marker adjectives (in the
spirit of Goldberg's Big-Five markers), a trait-consistent experience (one per trait, polarity and
level), and a name, age, occupation and home town drawn with the seed. `cards.json` beside this
module is `generate_cards()` written by `write_cards`, and its `sha256` is the hash of the cards'
canonical JSON (sorted keys, no spaces, UTF-8). A card file whose hash does not match its cards is
refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

from compress.errors import CompressError

FORMAT = "compress-persona-cards"
VERSION = 1
SEED = 2502_03821
HERE = Path(__file__).resolve().parent
CARDS_FILE = HERE / "cards.json"
TRAITS: dict[str, str] = {"O": "Openness", "C": "Conscientiousness", "E": "Extraversion", "A": "Agreeableness",
                          "N": "Neuroticism"}
POLARITIES = ("high", "low")
LEVELS = ("a bit", "very", "extremely")

# (trait, polarity) -> how it is named in a card, its marker adjectives, and three experiences (one per level)
TRAIT_TEXT: dict[tuple[str, str], dict[str, Any]] = {
    ("O", "high"): {"word": "open to new experiences", "markers": ["imaginative", "curious", "inventive", "artistic"],
                    "experiences": ["You sometimes take a different route home just to see new streets.",
                                    "You taught yourself to paint after a trip to a modern art museum changed how you saw colour.",
                                    "You once quit a stable job to spend a year learning three languages and writing poetry in each."]},
    ("O", "low"): {"word": "set in familiar ways", "markers": ["conventional", "practical", "down-to-earth", "traditional"],
                   "experiences": ["You usually order the same dish at your favourite restaurant.",
                                   "You have kept the same daily routine for ten years and see no reason to change it.",
                                   "You walked out of an abstract theatre play, saying there is no point in things nobody can explain."]},
    ("C", "high"): {"word": "conscientious", "markers": ["organised", "disciplined", "reliable", "thorough"],
                    "experiences": ["You like to write a short list before you go shopping.",
                                    "You plan every week on Sunday evening and rarely miss a deadline.",
                                    "You colour-code your calendar, check every detail twice and arrive ten minutes early to everything."]},
    ("C", "low"): {"word": "easy-going about duties", "markers": ["disorganised", "careless", "impulsive", "forgetful"],
                   "experiences": ["You sometimes forget where you put your keys.",
                                   "You often start projects and leave them half finished when something more fun comes up.",
                                   "You missed your own flight twice last year because you never check times or pack ahead."]},
    ("E", "high"): {"word": "extraverted", "markers": ["talkative", "outgoing", "energetic", "assertive"],
                    "experiences": ["You enjoy chatting with neighbours when you meet them.",
                                    "You organise a get-together with friends almost every weekend.",
                                    "You talk to strangers everywhere, love being the centre of attention and get restless when alone."]},
    ("E", "low"): {"word": "introverted", "markers": ["quiet", "reserved", "solitary", "withdrawn"],
                   "experiences": ["You prefer a small dinner to a big party.",
                                   "You spend most evenings alone with a book and find crowds tiring.",
                                   "You avoid phone calls, say as little as possible in groups and need days alone after any party."]},
    ("A", "high"): {"word": "agreeable", "markers": ["warm", "kind", "cooperative", "trusting"],
                    "experiences": ["You usually let others pick the film.",
                                    "You volunteer at a food bank and always try to see the other person's side.",
                                    "You would give your last coat to a stranger and cannot bear to see anyone upset."]},
    ("A", "low"): {"word": "disagreeable", "markers": ["critical", "blunt", "stubborn", "suspicious"],
                   "experiences": ["You sometimes point out other people's mistakes.",
                                   "You rarely compromise and tell people plainly when you think they are wrong.",
                                   "You argue with almost everyone, distrust other people's motives and never apologise."]},
    ("N", "high"): {"word": "emotionally sensitive", "markers": ["anxious", "moody", "tense", "easily upset"],
                    "experiences": ["You feel nervous before important meetings.",
                                    "You often lie awake worrying about things that might go wrong.",
                                    "You panic over small problems, your mood swings several times a day and you feel constantly on edge."]},
    ("N", "low"): {"word": "emotionally stable", "markers": ["calm", "relaxed", "even-tempered", "secure"],
                   "experiences": ["You rarely lose sleep over small problems.",
                                   "You stay calm in emergencies and friends come to you to settle down.",
                                   "Nothing seems to shake you: you stayed perfectly relaxed even when your house flooded."]},
}
NAMES = ["Alex Morgan", "Sam Rivera", "Jordan Lee", "Taylor Brooks", "Casey Nguyen", "Riley Patel", "Jamie Okafor",
         "Morgan Silva", "Avery Chen", "Quinn Murphy", "Rowan Kim", "Skyler Haas", "Dana Kowalski", "Robin Adeyemi",
         "Charlie Novak", "Emerson Diaz", "Finley Berg", "Harper Sato", "Jesse Ortiz", "Kendall Moreau", "Logan Price",
         "Marley Jensen", "Noel Fischer", "Parker Romero", "Reese Tanaka", "Sage Lindqvist", "Toby Mensah",
         "Wren Castillo", "Blair Horvat", "Devon Ito"]
OCCUPATIONS = ["nurse", "bus driver", "software tester", "baker", "librarian", "electrician", "secondary-school teacher",
               "accountant", "gardener", "pharmacist", "carpenter", "shop manager", "journalist", "dental hygienist",
               "chef", "postal worker", "architect", "physiotherapist", "bank clerk", "plumber"]
TOWNS = ["a small coastal town", "a busy capital city", "a farming village", "a university town", "an industrial city",
         "a mountain village", "the suburbs of a large city", "a river port"]


def card_id(trait: str, polarity: str, level: str) -> str:
    return f"{trait}{'+' if polarity == 'high' else '-'}{LEVELS.index(level) + 1}"


def persona_text(card: dict[str, Any]) -> str:
    """What the agent is told about itself (its system prompt starts with this)."""
    t = TRAIT_TEXT[(card["trait"], card["polarity"])]
    adj = t["markers"]
    return (f"You are {card['name']}, a {card['age']}-year-old {card['occupation']} from {card['town']}. "
            f"{card['experience']} You are {card['level']} {t['word']}: {', '.join(adj[:-1])} and {adj[-1]}.")


def generate_cards(seed: int = SEED) -> list[dict[str, Any]]:
    """The 30 cards (5 traits x 2 polarities x 3 levels), deterministic in `seed`."""
    rng = random.Random(seed)
    names = rng.sample(NAMES, len(NAMES))
    cards = []
    for trait in TRAITS:
        for polarity in POLARITIES:
            for li, level in enumerate(LEVELS):
                card = {"id": card_id(trait, polarity, level), "trait": trait, "trait_name": TRAITS[trait],
                        "polarity": polarity, "level": level, "name": names[len(cards)],
                        "age": rng.randint(22, 68), "occupation": rng.choice(OCCUPATIONS), "town": rng.choice(TOWNS),
                        "experience": TRAIT_TEXT[(trait, polarity)]["experiences"][li]}
                card["persona"] = persona_text(card)
                cards.append(card)
    return cards


def cards_hash(cards: list[dict[str, Any]]) -> str:
    """sha256 of the cards' canonical JSON (sorted keys, no spaces, UTF-8)."""
    text = json.dumps(cards, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_cards(path: str | os.PathLike[str] = CARDS_FILE, seed: int = SEED) -> Path:
    cards = generate_cards(seed)
    doc = {"format": FORMAT, "version": VERSION, "generator": f"{__name__}.generate_cards", "seed": seed,
           "sha256": cards_hash(cards), "cards": cards}
    p = Path(path)
    p.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return p


def _check_card(i: int, c: Any) -> None:
    if not isinstance(c, dict):
        raise CompressError(f"card {i} is not an object")
    for key in ("id", "trait", "polarity", "level", "name", "persona"):
        if not isinstance(c.get(key), str) or not c[key].strip():
            raise CompressError(f"card {i} has no {key}")
    if c["trait"] not in TRAITS or c["polarity"] not in POLARITIES or c["level"] not in LEVELS:
        raise CompressError(f"card {c['id']}: trait {c['trait']!r}, polarity {c['polarity']!r} or level "
                            f"{c['level']!r} is not one of {'/'.join(TRAITS)}, {'/'.join(POLARITIES)}, {'/'.join(LEVELS)}")


def load_cards(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The card file (default: the shipped fixture), its hash checked against its cards."""
    p = Path(path) if path is not None else CARDS_FILE
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CompressError(f"card file {p} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CompressError(f"card file {p} is not JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("cards"), list):
        raise CompressError(f"card file {p} is not a {FORMAT} file (an object with format, sha256 and cards)")
    cards = doc["cards"]
    if len(cards) < 2:
        raise CompressError(f"card file {p} holds {len(cards)} card(s): two agents need at least two")
    got = cards_hash(cards)
    if doc.get("sha256") != got:
        raise CompressError(f"card file {p}: its sha256 {doc.get('sha256')} does not match its cards ({got}); "
                            "the cards were changed after the file was made")
    for i, c in enumerate(cards):
        _check_card(i, c)
    if len({c["id"] for c in cards}) != len(cards):
        raise CompressError(f"card file {p} has repeated card ids")
    return {"path": str(p.resolve()), "sha256": got, "seed": doc.get("seed"), "cards": cards}

"""Cool-Fusion (Liu et al., ACL 2025, arXiv 2407.19807): training-free fusion of LLMs with different
tokenizers at decoding time.

Each round, every model u greedily writes a segment s_u after the shared answer text T (in its own
prompt format, on its own KV cache), up to a word boundary (`compress.fuse.boundary`):

    aligned:  the shortest text ending at a word boundary that is a token boundary for every tokenizer
    shortest: the shortest text ending at a word boundary of u's own tokens

or before its end token (the end token alone is then the next round's candidate), or after
`max_segment_tokens` tokens without a boundary (a "forced" segment, at a whole character).

Every model v scores every distinct candidate by its conditional perplexity under v's tokenisation,

    PPL_v(s) = exp( -(1/|s|_v) * sum_{t in s} log p_v(t | prompt_v, T, s_<t) ),

the candidate with the lowest mean (1/K) sum_v PPL_v(s) wins (ties: lowest model index), T <- T + s*.
A model whose own candidate won keeps its generated ids and cache; the others keep their cache up to
the last k words of T and take the re-encoded tail (last k words + s*) whose keys/values were already
computed while scoring (`compress.fuse.kv`). A candidate that ends the answer carries each scorer's end
token in its score. "+R" reranks the K single-model answers and the fused one by the same mean PPL.
With one model (or K identical ones) this is greedy decoding, token for token.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from compress.errors import CompressError
from compress.fuse import kv
from compress.fuse.boundary import is_token_boundary, is_word_boundary, last_words_start
from compress.fuse.sources import ChatMode, Prompt, Source, make_source, render_prompt
from compress.fuse.tokens import clean, complete_prefix, from_utf8, utf8

TAIL_MAX_CHARS = 64  # text without spaces is one long word: re-encode at most this much of it


@dataclass
class State:
    """One model's decoding state: ids in its cache (prompt + accepted answer tokens), byte ends of the answer
    tokens in T, and the logits after the last id."""

    src: Source
    prompt: list[int]
    prompt_logits: torch.Tensor
    cache: Any
    ids: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    logits: torch.Tensor | None = None
    budget: int = 0

    def reset(self) -> None:
        kv.crop_to(self.cache, len(self.prompt))
        self.ids, self.ends, self.logits = list(self.prompt), [], self.prompt_logits

    @property
    def generated(self) -> int:
        return len(self.ids) - len(self.prompt)


@dataclass
class Proposal:
    ids: list[int]
    logps: list[float]  # log-probabilities of ids (and of the end token when eos)
    text: str
    eos: bool
    reason: Literal["boundary", "eos", "forced", "budget"]
    fed: int  # how many of ids are in the cache
    logits: torch.Tensor  # after the last fed id
    follow: str = ""  # text of the token the model would write next (what made the boundary)


@dataclass
class Candidate:
    text: str
    eos: bool
    reason: str
    proposers: list[int]
    follow: str = ""


@dataclass
class Plan:
    """How scorer v takes a candidate: keep ids[:keep], then `new` (computed at packed offset `offset`)."""

    keep: int
    new: list[int]
    ends: list[int]
    offset: int
    logits: torch.Tensor | None = None


def ppl(logps: list[float]) -> float:
    """exp(-mean log p); infinite for no tokens."""
    return math.exp(-sum(logps) / len(logps)) if logps else math.inf


def select(scores: list[float]) -> int:
    """Index of the lowest score, ties to the lowest index."""
    return min(range(len(scores)), key=lambda i: (scores[i], i))


def tail_start(st: State, text_bytes: bytes, start_char_bytes: int) -> tuple[int, int]:
    """(token index, byte offset in T) of the last token boundary of `st` at or before byte `start_char_bytes`
    that is also a character boundary of T."""
    j = 0
    for i, e in enumerate(st.ends):
        if e > start_char_bytes:
            break
        if e == len(text_bytes) or (text_bytes[e] & 0xC0) != 0x80:
            j = i + 1
    return len(st.prompt) + j, (st.ends[j - 1] if j else 0)


@dataclass
class Decoded:
    """The answer of one decoding run: raw text (lone surrogates for invalid bytes), segments, wins.

    `wins[u]` credits a contested segment to the first model that proposed the winning text; `backed[u]`
    counts every model that proposed it (co-proposers included), so identical proposals are visible."""

    text: str = ""
    finish: str | None = None
    segments: list[dict[str, Any]] = field(default_factory=list)
    wins: list[int] = field(default_factory=list)
    backed: list[int] = field(default_factory=list)
    eos_ids: list[list[int]] = field(default_factory=list)

    def add(self, segment: str, stop: list[str]) -> None:
        """Append a segment; a stop string found in the text ends it there (segments cut to match)."""
        old = len(self.text)
        self.text += segment
        hits = [i for x in stop for i in [self.text.find(x, max(0, old - len(x) + 1))] if i >= 0]
        if not hits:
            return
        cut = min(hits)
        self.text, self.finish = self.text[:cut], "stop"
        end = old + len(segment)
        for sg in reversed(self.segments):  # drop what lies past the cut
            start = end - len(sg["text"])
            sg["text"] = sg["text"][: max(0, cut - start)]
            end = start

    def as_dict(self, states: list[State]) -> dict[str, Any]:
        segs = [{**sg, "text": clean(sg["text"]),
                 **({"candidates": [{**c, "text": clean(c["text"]), "next": clean(c["next"])}
                                    for c in sg["candidates"]]}
                    if "candidates" in sg else {})} for sg in self.segments]
        return {"text": clean(self.text), "finish_reason": self.finish, "segments": segs,
                "wins": {st.src.name: n for st, n in zip(states, self.wins, strict=True)},
                "backed": {st.src.name: n for st, n in zip(states, self.backed, strict=True)},
                "agreed": sum(sg["agree"] for sg in self.segments),
                "tokens": {st.src.name: st.generated for st in states},
                "ids": {st.src.name: st.ids[len(st.prompt):] + e for st, e in zip(states, self.eos_ids, strict=True)}}


class Clock:
    """Wall and CPU seconds per phase."""

    def __init__(self):
        self.laps: dict[str, dict[str, float]] = {}
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def lap(self, name: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.laps[name] = {"wall": round(wall - self._wall, 4), "cpu": round(cpu - self._cpu, 4)}
        self._wall, self._cpu = wall, cpu


def _tokenizer_key(src: Source) -> tuple:
    """Tokenizers loaded from the same folder (or the same object) are one tokenizer."""
    path = getattr(src.tokenizer, "name_or_path", "")
    return (src.view.kind, len(src.tokenizer), path) if path else (id(src.tokenizer),)


class CoolFusionDecoder:
    """Cool-Fusion over `models` [(model, tokenizer), ...]; one model gives plain greedy decoding."""

    def __init__(self, models: list[tuple[torch.nn.Module, Any]], names: list[str] | None = None,
                 segment: Literal["aligned", "shortest"] = "aligned", rerank: bool = False, k_context_words: int = 4,
                 max_new_tokens: int = 256, max_segment_tokens: int = 32, chat: ChatMode = "auto"):
        if not models:
            raise CompressError("no model given: Cool-Fusion needs at least one model")
        if segment not in ("aligned", "shortest"):
            raise CompressError(f"unknown segment mode {segment!r}: aligned or shortest")
        if max_new_tokens < 1:
            raise CompressError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
        if max_segment_tokens < 1:
            raise CompressError(f"--max-segment-tokens must be at least 1, got {max_segment_tokens}")
        names = list(names) if names else [f"m{i}" for i in range(len(models))]
        self.sources = [make_source(m, t, n) for (m, t), n in zip(models, names, strict=True)]
        self.segment, self.rerank, self.k = segment, rerank, k_context_words
        self.max_new_tokens, self.max_segment_tokens, self.chat = max_new_tokens, max_segment_tokens, chat
        seen: dict[tuple, int] = {}
        for i, s in enumerate(self.sources):  # one boundary check per distinct tokenizer
            seen.setdefault(_tokenizer_key(s), i)
        self.distinct_views = sorted(seen.values())
        self.stats: dict[str, float] = {}  # forward passes: proposal_forwards, score_forwards

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def generate(self, prompt: Prompt, stop: list[str] | None = None, max_new_tokens: int | None = None,
                 trace: bool = False) -> dict[str, Any]:
        """Decode one prompt (plain text or chat messages); `stop`: strings that end the answer (cut off).

        Returns {text, finish_reason (eos|stop|length), segments [{text, winner, agree, reason[, candidates]}],
        wins (contested segments won per model), agreed, tokens and ids (answer tokens per model), time
        ({phase: {wall, cpu}} seconds)} and, with rerank and several models, singles and rerank."""
        budget = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        if budget < 1:
            raise CompressError(f"--max-new-tokens must be at least 1, got {budget}")
        stop = [x for x in (stop or []) if x]
        clock = Clock()
        states = [self._start(s, prompt, budget) for s in self.sources]
        clock.lap("prefill")
        fused = self._decode(states, stop, trace)
        clock.lap("decode")
        out = fused.as_dict(states)
        if self.rerank and len(states) > 1:
            singles = []
            for st in states:
                st.reset()
                singles.append(self._decode([st], stop, False))
                clock.lap(f"single:{st.src.name}")
            out["singles"] = {st.src.name: {"text": clean(d.text), "finish_reason": d.finish,
                                            "tokens": st.generated} for st, d in zip(states, singles, strict=True)}
            # the answers as shown (invalid bytes dropped) are what is scored
            out["rerank"] = self._rerank(states, [clean(fused.text), *[clean(d.text) for d in singles]])
            clock.lap("rerank")
        out["time"] = clock.laps
        return out

    # ------------------------------------------------------------------ decoding loop
    def _start(self, src: Source, prompt: Prompt, budget: int) -> State:
        ids = render_prompt(src, prompt, self.chat)
        cache = kv.new_cache()
        logits = kv.forward_step(src.model, cache, ids)
        st = State(src=src, prompt=ids, prompt_logits=logits, cache=cache)
        st.reset()
        st.budget = budget if src.context is None else min(budget, src.context - len(ids))
        return st

    def _decode(self, states: list[State], stop: list[str], trace: bool) -> Decoded:
        out = Decoded(wins=[0] * len(states), backed=[0] * len(states), eos_ids=[[] for _ in states])
        while out.finish is None:
            if any(st.generated >= st.budget for st in states):
                out.finish = "length"
                break
            left = out.text[last_words_start(out.text, self.k, TAIL_MAX_CHARS):]
            props = [self._propose(u, st, left) for u, st in enumerate(states)]
            cands = self._candidates(props)
            scores, plans, mean, w = None, None, None, 0
            if len(cands) > 1:
                scores, plans = zip(*[self._score(st, props[v], cands, out.text) for v, st in enumerate(states)],
                                    strict=True)
                mean = [sum(sc[j] for sc in scores) / len(states) for j in range(len(cands))]
                w = select(mean)
                out.wins[cands[w].proposers[0]] += 1
                for u in cands[w].proposers:
                    out.backed[u] += 1
            win = cands[w]
            seg: dict[str, Any] = {"text": win.text, "winner": states[win.proposers[0]].src.name,
                                   "agree": len(cands) == 1, "reason": win.reason}
            if trace:
                seg["candidates"] = [{"text": c.text, "eos": c.eos, "reason": c.reason, "next": c.follow,
                                      "models": [states[u].src.name for u in c.proposers],
                                      "ppl": None if scores is None else {st.src.name: scores[v][j]
                                                                           for v, st in enumerate(states)},
                                      "score": None if mean is None else mean[j]} for j, c in enumerate(cands)]
            out.segments.append(seg)
            for v, st in enumerate(states):
                self._accept(st, props[v], win, None if plans is None else plans[v][w], out.text)
            out.add(win.text, stop)
            if out.finish is None and win.eos:
                for u in win.proposers:
                    out.eos_ids[u] = [props[u].ids[-1]]
                out.finish = "eos"
            elif out.finish is None and win.reason == "budget":
                out.finish = "length"
        return out

    def _candidates(self, props: list[Proposal]) -> list[Candidate]:
        out: dict[tuple[str, bool], Candidate] = {}
        for u, p in enumerate(props):
            key = (p.text, p.eos)
            if key in out:
                out[key].proposers.append(u)
            else:
                out[key] = Candidate(text=p.text, eos=p.eos, reason=p.reason, proposers=[u], follow=p.follow)
        return list(out.values())

    # ------------------------------------------------------------------ proposal
    def _propose(self, u: int, st: State, left: str) -> Proposal:
        """Greedy tokens of model u up to a segment end (see the module doc)."""
        src, logits = st.src, st.logits
        ids: list[int] = []
        logps: list[float] = []
        seg = b""
        room = st.budget - st.generated
        while True:
            t = int(torch.argmax(logits))
            lp = float(torch.log_softmax(logits, -1)[t])
            if t in src.eos_ids:  # the end of the answer is a boundary: the end token is a candidate of its own
                text, n = complete_prefix(seg)
                if ids and n == len(seg):
                    return Proposal(ids, logps, text, False, "boundary", len(ids), logits, "")
                return Proposal(ids + [t], logps + [lp], text, True, "eos", len(ids), logits)
            piece = src.view.token_bytes(t)
            if ids:
                text, n = complete_prefix(seg)
                if n == len(seg):
                    right = complete_prefix(piece)[0]
                    if is_word_boundary(text, right) and (self.segment == "shortest" or self._aligned(u, left, text, right)):
                        return Proposal(ids, logps, text, False, "boundary", len(ids), logits, right)
                    if len(ids) >= self.max_segment_tokens:
                        return Proposal(ids, logps, text, False, "forced", len(ids), logits)
            ids.append(t)
            logps.append(lp)
            seg += piece
            if len(ids) >= room:  # the last token of the budget is not fed: nothing follows it
                text = complete_prefix(seg)[0]
                return Proposal(ids, logps, text, False, "budget", len(ids) - 1, logits)
            logits = kv.forward_step(src.model, st.cache, [t])
            self.stats["proposal_forwards"] = self.stats.get("proposal_forwards", 0) + 1

    def _aligned(self, u: int, left: str, text: str, right: str) -> bool:
        """Is the end of `text` a token boundary for every other tokenizer (offset mapping of a window)?"""
        window, p = left + text + right, len(left) + len(text)
        own = self.sources[u].view
        for i in self.distinct_views:
            view = self.sources[i].view
            if view is not own and not is_token_boundary(view.offsets(window), p):
                return False
        return True

    # ------------------------------------------------------------------ scoring and state update
    def _score(self, st: State, own: Proposal, cands: list[Candidate], text: str) -> tuple[list[float], list[Plan | None]]:
        """PPL of every candidate under st's model; one packed forward over the cached prefix."""
        src = st.src
        tb = utf8(text)
        start_b = len(utf8(text[: last_words_start(text, self.k, TAIL_MAX_CHARS)]))
        tail_tok, tail_b = tail_start(st, tb, start_b)
        tail = from_utf8(tb[tail_b:])
        tail_len = len(tb) - tail_b
        scores: list[float] = [math.inf] * len(cands)
        plans: list[Plan | None] = [None] * len(cands)
        blocks, starts, wanted = [], [], []  # wanted: (candidate, block, [(logit index, token)], last index)
        offset = 0
        for j, c in enumerate(cands):
            if st_own_matches(own, c):
                scores[j] = ppl(own.logps)
                continue
            frag = src.view.encode_fragment(tail + c.text)
            if src.view.ids_bytes(frag.ids) != utf8(tail + c.text):
                continue  # the text holds a special-token string this tokenizer cannot spell: unscorable
            base = st.ids
            lcp = 0
            while lcp < min(len(base) - tail_tok, len(frag.ids)) and frag.ids[lcp] == base[tail_tok + lcp]:
                lcp += 1
            keep = tail_tok + lcp
            new = frag.ids[lcp:]
            block = [base[keep - 1], *new]
            targets = [(offset + i, t) for i, (t, e) in enumerate(zip(new, frag.byte_ends[lcp:], strict=True))
                       if e > tail_len]
            if c.eos and src.eos_id is not None:
                targets.append((offset + len(block) - 1, src.eos_id))
                block.append(src.eos_id)
            plans[j] = Plan(keep=keep, new=new, ends=[tail_b + e for e in frag.byte_ends[lcp:]], offset=offset)
            wanted.append((j, targets, offset + len(new)))
            blocks.append(block)
            starts.append(keep - 1)
            offset += len(block)
        if not blocks:
            return scores, plans
        keep_idx = sorted({i for _, tg, last in wanted for i in ([x for x, _ in tg] + [last])})
        where = {i: n for n, i in enumerate(keep_idx)}
        prefix = kv.cache_len(st.cache)
        logits = kv.forward_packed(src.model, st.cache, blocks, starts, keep_idx)
        self.stats["score_forwards"] = self.stats.get("score_forwards", 0) + 1
        logp = torch.log_softmax(logits, -1)
        for j, targets, last in wanted:
            scores[j] = ppl([float(logp[where[i], t]) for i, t in targets])
            plans[j].offset += prefix
            plans[j].logits = logits[where[last]]
        return scores, plans

    def _accept(self, st: State, own: Proposal, win: Candidate, plan: Plan | None, text: str) -> None:
        """Roll st forward by the winning candidate (T = `text` before it)."""
        if st_own_matches(own, win):
            base = len(st.ids)
            kv.crop_to(st.cache, base + own.fed)
            pos = len(utf8(text))
            n = 0
            for t in own.ids[: len(own.ids) - (1 if own.eos else 0)]:
                n += len(st.src.view.token_bytes(t))
                st.ends.append(pos + n)
            st.ids.extend(own.ids[: len(own.ids) - (1 if own.eos else 0)])
            st.logits = own.logits if own.fed == len(own.ids) else st.logits
            return
        if win.eos:
            return  # decoding ends: nothing follows
        if plan is None:
            raise CompressError(f"{st.src.name} cannot spell the chosen segment {win.text!r} with its tokenizer")
        idx = torch.cat([torch.arange(plan.keep - 1), torch.arange(plan.offset, plan.offset + 1 + len(plan.new))])
        kv.keep_positions(st.cache, idx)
        st.ids = st.ids[: plan.keep] + plan.new
        st.ends = st.ends[: plan.keep - len(st.prompt)] + plan.ends
        st.logits = plan.logits

    # ------------------------------------------------------------------ rerank ("+R")
    def _rerank(self, states: list[State], answers: list[str]) -> dict[str, Any]:
        """Mean PPL of each answer under every model (conditional on its prompt); the lowest wins, ties to the
        fused answer, then model order."""
        labels = ["fused", *[st.src.name for st in states]]
        distinct = list(dict.fromkeys(answers))
        table = {}
        for st in states:
            st.reset()
            table[st.src.name] = [self._answer_ppl(st, a) for a in distinct]
        mean = [sum(table[n][j] for n in table) / len(states) for j in range(len(distinct))]
        best = select(mean)
        chosen = answers.index(distinct[best])
        return {"text": distinct[best], "chosen": labels[chosen],
                "answers": [{"source": lab, "text": a, "score": mean[distinct.index(a)],
                             "ppl": {n: table[n][distinct.index(a)] for n in table}}
                            for lab, a in zip(labels, answers, strict=True)]}

    def _answer_ppl(self, st: State, answer: str, chunk: int = 64) -> float:
        frag = st.src.view.encode_fragment(answer)
        if not frag.ids or st.src.view.ids_bytes(frag.ids) != utf8(answer):
            return math.inf
        logps = [float(torch.log_softmax(st.prompt_logits, -1)[frag.ids[0]])]
        for a in range(0, len(frag.ids) - 1, chunk):
            piece = frag.ids[a: a + chunk]
            x = torch.tensor([piece], device=st.src.device)
            out = st.src.model(input_ids=x, cache=st.cache, use_cache=True)
            lp = torch.log_softmax(out.logits[0].float(), -1)
            nxt = frag.ids[a + 1: a + 1 + len(piece)]
            logps.extend(float(lp[i, t]) for i, t in enumerate(nxt))
        kv.crop_to(st.cache, len(st.prompt))
        return ppl(logps)


def st_own_matches(own: Proposal | None, c: Candidate) -> bool:
    """Is candidate c this model's own proposal (so its generation log-probs, ids and cache are reused)?

    Only a proposal cut by the budget may hold bytes beyond its text (an unfinished character); decoding
    ends with it."""
    return own is not None and own.text == c.text and own.eos == c.eos

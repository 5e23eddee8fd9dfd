"""Held-out figures of a student, and the frozen reference's log-probs that DPO and the figures need."""

from __future__ import annotations

import torch

from compress.data.preference import PreferenceExample, collate_slot
from compress.distill import losses as L
from compress.distill.forward import response_token_logps, sequence_logps, sequence_sums
from compress.errors import CompressError


@torch.no_grad()
def evaluate(forward, examples: list[PreferenceExample], pad_id: int, ref_logps: dict[str, torch.Tensor],
             teacher=None, batch_size: int = 4) -> dict[str, float]:
    """Held-out pairs: preference accuracy of the implicit reward log π_θ(y) − log π_ref(y) (ref = the
    initial student, or the DPO reference), chosen-response NLL per token, and — with a teacher signal
    on chosen responses — forward KL to the teacher and top-1 agreement with it."""
    if not examples:
        return {}
    wins, nll, ntok, kl, agree, nkl, n_pairs = 0.0, 0.0, 0, 0.0, 0.0, 0, 0
    for b0 in range(0, len(examples), batch_size):
        exs = examples[b0: b0 + batch_size]
        idx = torch.tensor([e.index for e in exs])
        lp = {}
        pairs = all("rejected" in e.responses for e in exs)  # SFT-style data (fuse train) has no rejected
        for s in ("chosen", "rejected") if pairs else ("chosen",):
            b = collate_slot(exs, s, pad_id)
            lg = forward(b)
            lp[s] = sequence_logps(lg, b.targets, b.lengths).cpu()
            if s == "chosen":
                nll -= float(lp[s].sum())
                ntok += int(b.lengths.sum())
                if teacher is not None:
                    try:
                        sg = teacher.signals(exs, b, "chosen")
                    except (CompressError, KeyError):
                        sg = None
                    if sg is not None:
                        dev = lg.device
                        sg = sg.to(dev)
                        kl += float((L.dense_kd_tokens(lg, sg.dense) if sg.dense is not None
                                     else L.topk_kd_tokens(lg, sg.ids, sg.logprobs, sg.rest)).sum())
                        agree += float((lg.argmax(-1) == sg.ids[:, 0].to(dev)).float().sum())
                        nkl += lg.shape[0]
        if pairs:
            rw = lp["chosen"] - ref_logps["chosen"][idx]
            rl = lp["rejected"] - ref_logps["rejected"][idx]
            wins += float((rw > rl).float().sum())
            n_pairs += len(exs)
    out = {"chosen_nll": nll / max(ntok, 1)}
    if n_pairs:
        out["pref_acc"] = wins / n_pairs
    if nkl:
        out["kl_teacher"] = kl / nkl
        out["agree_teacher"] = agree / nkl
    return out


@torch.no_grad()
def reference_logps(model: torch.nn.Module, examples: list[PreferenceExample], pad_id: int, n_total: int,
                    batch_size: int = 4, advance=None) -> dict[str, torch.Tensor]:
    """Summed response log-probs of a frozen reference for chosen, rejected and (WRPO data) source, indexed by
    example index."""
    slots = ("chosen", "rejected") + (("source",) if examples and "source" in examples[0].responses else ())
    out = {s: torch.zeros(n_total) for s in slots}
    was = model.training
    model.eval()
    for b0 in range(0, len(examples), batch_size):
        exs = examples[b0: b0 + batch_size]
        idx = torch.tensor([e.index for e in exs])
        for s in slots:
            if not all(s in e.responses for e in exs):  # SFT-style data (fuse train): no pairs
                continue
            b = collate_slot(exs, s, pad_id)
            out[s][idx] = sequence_sums(response_token_logps(model, b), b.lengths).float().cpu()
        if advance:
            advance(len(exs))
    model.train(was)
    return out

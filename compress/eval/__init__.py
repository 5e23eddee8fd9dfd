"""Measuring models: perplexity, lm-eval tasks on local data, comparison tables."""

from compress.eval.ppl import PplResult, perplexity, window_nlls

__all__ = ["PplResult", "perplexity", "window_nlls"]

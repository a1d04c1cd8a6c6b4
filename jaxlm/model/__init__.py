"""The Flax NNX decoder-only Transformer and its parts."""

from jaxlm.model.transformer import DTYPES, Transformer

__all__ = ['DTYPES', 'Transformer']

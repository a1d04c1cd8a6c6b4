"""jaxlm: a readable JAX/Flax NNX stack for pretraining decoder-only language models."""

__version__ = '0.1.0'

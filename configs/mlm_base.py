"""Masked language modelling (BERT's objective) on the shipped corpus: the default model made
bidirectional, with a masking ratio that decays from 30% to 15% over the run.

BERT hides 15% of the tokens (80% of them replaced by [MASK], 10% by a random token, 10% kept);
Wettig et al. (2023, "Should You Mask 15% in Masked Language Modeling?") find higher ratios train
better, and decaying schedules (30% -> 15%) are one way to get both. `jaxlm.eval` scores every
checkpoint on the same 15% of the validation tokens (mlm.eval_ratio, fixed seed), so runs with
different schedules compare. A few minutes on a 2-core CPU.
"""

from jaxlm.configs import base


def get_config():
  c = base.get_config()
  c.workdir = 'runs/mlm_base'
  c.model.causal = False  # an encoder: every token sees the whole window
  c.train.objective = 'mlm'
  c.train.sample_tokens = 0  # an encoder does not generate
  c.mlm.ratio_schedule = 'linear'
  c.mlm.ratio_start, c.mlm.ratio_end = 0.3, 0.15
  return c

"""Causal language modelling: predict each next token (the default objective)."""

from ml_collections import ConfigDict

from jaxlm.errors import UserError
from jaxlm.objectives.base import Objective


class Causal(Objective):
  name = 'causal'

  @classmethod
  def check(cls, cfg: ConfigDict) -> None:
    if not cfg.model.causal:
      raise UserError("config field model.causal=False lets each token see the next one, which "
                      "train.objective='causal' predicts; use train.objective='mlm' (or keep "
                      'model.causal=True).')

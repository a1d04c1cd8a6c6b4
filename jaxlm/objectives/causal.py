"""Causal language modelling: predict each next token (the default objective)."""

from jaxlm.objectives.base import Objective


class Causal(Objective):
  name = 'causal'

"""T5's span corruption on the shipped corpus, for the default decoder as a prefix LM.

Each row is a raw window of the corpus from which 15% of the tokens are hidden in spans of mean
length 3 (span.noise_density, span.mean_span_length); the model reads the corrupted window (each
span replaced by one sentinel id, the top ids of the vocabulary) bidirectionally as a prefix, then
predicts the target (each sentinel followed by the tokens it hid) causally after it. The window
is as long as T5's random_spans_helper makes it for the prefix and the target to fill
model.max_seq_len: 128 positions take windows of 115 raw tokens, 105 input and 24 target tokens.
A few minutes on a 2-core CPU.
"""

from jaxlm.configs import base


def get_config():
  c = base.get_config()
  c.workdir = 'runs/span_base'
  c.train.objective = 'span'
  return c

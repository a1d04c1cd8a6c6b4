"""The case study's encoder-decoder: input sequence -> bidirectional LSTM encoder -> context
vector -> multilayer LSTM decoder -> output distribution, trained with T5's span corruption on the
shipped Shakespeare corpus at about the parameters of configs/shakespeare_char.py's Transformer.

The corrupted window (15% of its characters hidden in spans of mean length 3, each span one
sentinel id) goes to the encoder; each encoder layer's final forward and backward states start
the decoder layer above them; the decoder predicts the sentinels and the characters they hid.
Two layers of width 116 (a bidirectional encoder layer, 18 D^2 + 8 D; a decoder layer with its
bridges, 12 D^2 + 4 D) with tied embeddings, 0.82M in all. `--config.model.decoder_attention=luong`
adds Luong's attention over the encoder's outputs (3 D^2 more). Its Transformer counterpart is
the character recipe as a prefix LM:
`--config=configs/shakespeare_char.py --config.train.objective=span`. The rest is the character
recipe's: windows at every offset, batch 12, AdamW 1e-3 with warm-up and cosine decay.
"""

from jaxlm.configs import lstm_char


def get_config():
  c = lstm_char.get_config()
  c.workdir = 'runs/lstm_seq2seq_char'
  c.model.kind, c.model.embed_dim = 'lstm_seq2seq', 116
  c.train.objective = 'span'
  return c

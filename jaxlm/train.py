"""Train a language model: `python -m jaxlm.train --config=configs/base.py [--config.x.y=v ...]`.

Running the same command again resumes from the latest checkpoint in the config's workdir.
"""

from jaxlm import cli

_CONFIG = cli.ConfigFlag()


def main(argv: list[str]) -> None:
  cfg = _CONFIG.value
  from jaxlm import trainer  # Imported after flag parsing: a bad flag fails before JAX loads.
  trainer.run(cfg)


def command() -> None:
  """The command line: flags, the config file, one-sentence errors (cli.run)."""
  cli.run(main, config=_CONFIG)


if __name__ == '__main__':
  command()

"""Everything is in pyproject.toml but one file: jaxlm-lm-eval.pth, which a regular (wheel)
install puts in site-packages so that lm-eval's own command line knows the jaxlm model (see
jaxlm/lm_eval_plugin.py; an editable install runs `python -m jaxlm.lm_eval_plugin install`)."""

import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'jaxlm'))
from lm_eval_plugin import LINE, PTH  # noqa: E402  pylint: disable=C0413


class BuildWithPth(build_py):

  def run(self):
    super().run()
    with open(os.path.join(self.build_lib, PTH), 'w', encoding='utf-8') as f:
      f.write(LINE)

  def get_outputs(self, include_bytecode=1):
    return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, PTH)]


setup(cmdclass={'build_py': BuildWithPth})

"""Sweeps of jaxlm.train runs: run here in parallel or handed to SLURM or Kubernetes, reported,
and searched with Optuna. The code and its documentation are in jaxlm/sweep/__main__.py.

  python launch/sweep.py --config=configs/shakespeare_char.py \
      --grid='optim.lr=1e-3,3e-3 model.num_layers=4,6' --root=runs/sweep --parallel=2
  python launch/sweep.py report --root=runs/sweep
  python launch/sweep.py search --config=configs/shakespeare_char.py \
      --space='optim.lr=log:1e-4:1e-2' --trials=20 --root=runs/search
"""

from jaxlm.sweep.__main__ import command

if __name__ == '__main__':
  command()

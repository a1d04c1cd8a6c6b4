"""Sweeps of training runs (`launch/sweep.py`): points from a grid or a list (points.py), their
state on disk (state.py), run here in parallel (local.py) or by a scheduler (scheduler.py),
reported (report.py), and searched with Optuna (search.py)."""

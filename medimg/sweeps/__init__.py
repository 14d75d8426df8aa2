"""Sweeps (``python -m medimg.train -m ...``): Hydra callbacks for every multirun and what they read back.

``summary.SweepSummary`` records each job's status in its run folder and keeps ``summary.csv`` and
``summary.png`` in the sweep folder up to date; ``ddp.DDPJobProcesses`` lets a sweep job start its own DDP
processes. Both are switched on by ``conf/hydra/sweep_callbacks.yaml``; docs/sweeps.md tells the whole story.
"""

"""The training-throughput benchmark (``benchmarks/train_throughput.py``), by role.

- ``data``: the HAM10000-like JPEG set it trains on (also used by ``eval_batch.py`` and ``loader_cache.py``);
- ``build``: medimg's config, data module and model, composed the way ``python -m medimg.train`` does;
- ``runners``: each way of training, run in its own process (baseline, plain loop, ceiling);
- ``loading``: the loading cost per training image of each input pipeline;
- ``measure``: wall time, peak memory and other processes' CPU share of one measured process;
- ``harness``: one configuration measured in its own process, again when the machine was busy;
- ``tables``, ``options``: the Markdown tables; ``accuracy``: the bf16 vs fp32 and feature-cache checks;
- ``report``: the whole printed report.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

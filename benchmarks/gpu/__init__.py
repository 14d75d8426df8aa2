"""The GPU check's parts (``benchmarks/gpu_check.py`` runs them): installing medimg on a machine that has its own
torch, time-boxed processes, GPU utilisation sampling, the throughput data set, the bare train step, the loader
alone, and the final report."""

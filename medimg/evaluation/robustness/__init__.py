"""Robustness under common corruptions: the corruptions (``corruptions``), the split measured under each at
each severity (``measure``) and its report (``report``)."""

from medimg.evaluation.robustness.corruptions import CORRUPTIONS, check_corruptions, corrupt
from medimg.evaluation.robustness.measure import corruption_summary, evaluate_robustness, robustness_table

__all__ = ["CORRUPTIONS", "check_corruptions", "corrupt", "corruption_summary", "evaluate_robustness",
           "robustness_table"]

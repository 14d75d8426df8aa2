"""Selective prediction: a classifier that refers to a clinician the images it is least sure of. Pure
functions, no Lightning, no data code.

``confidences`` gives each image's confidence (the calibrated probability of its decided class);
``risk_coverage`` and ``aurc`` the risk-coverage curve and its area (AURC, E-AURC; ``curve``);
``ReferralRule.fit`` the referral threshold chosen on validation for a target accuracy (``rule``);
``selective_metrics`` AURC, the share referred and the accuracy of the rest on a test split, with bootstrap
intervals (``metrics``); ``plots.risk_coverage_figure`` the figure.
"""

from medimg.evaluation.selective.curve import aurc, confidences, risk_coverage, weighted_aurc
from medimg.evaluation.selective.metrics import selective_metrics, selective_table
from medimg.evaluation.selective.rule import ReferralRule, lower_bound

__all__ = ["ReferralRule", "aurc", "confidences", "lower_bound", "risk_coverage", "selective_metrics",
           "selective_table", "weighted_aurc"]

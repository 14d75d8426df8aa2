"""Split conformal prediction sets from a classifier's (calibrated) probabilities: pure functions, no
Lightning, no data code.

``Conformal.fit`` fits a rule on calibration images (``lac``, ``aps`` or ``raps`` scores, optionally one
threshold per class: ``mondrian``); ``Conformal.sets`` gives each image's set, ``describe`` one line,
``to_dict`` / ``from_dict`` the plain dict a checkpoint stores. ``set_metrics`` measures coverage and set size
on a test split with bootstrap intervals; ``coverage_curve`` both over a grid of alpha (``Conformal.at``,
``plots.coverage_figure``); ``coverage_warnings`` the coverages clearly below their target.
"""

from medimg.evaluation.conformal.coverage import coverage_curve, coverage_warnings, set_metrics, set_table
from medimg.evaluation.conformal.rule import Conformal, check_settings, set_names
from medimg.evaluation.conformal.scores import SCORES, needed_images
from medimg.names import CONFORMAL_SCORES, same_names

same_names(dict.fromkeys(SCORES), CONFORMAL_SCORES, "conformal scores")

__all__ = ["SCORES", "Conformal", "check_settings", "coverage_curve", "coverage_warnings", "needed_images", "set_metrics",
           "set_names", "set_table"]

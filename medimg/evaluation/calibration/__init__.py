"""Probability calibration fitted on the validation split: one ``Calibration`` value per fitted method.

Methods (one module each, registered by name): ``none`` (softmax), ``temperature``, ``platt`` (binary),
``bcts`` (bias-corrected temperature), ``vector``, ``isotonic``; ``auto`` chooses among them by
cross-validated validation NLL (``selection``). ``fit_settings`` fits what the ``calibration`` config group
says, the binary operating threshold (``threshold``) included. ``Calibration.from_dict`` reads the plain dict a
checkpoint stores.
"""

from medimg.evaluation.calibration.base import Calibration
from medimg.evaluation.calibration.bcts import BCTS
from medimg.evaluation.calibration.ensemble import FoldEnsemble
from medimg.evaluation.calibration.fit import fit_settings
from medimg.evaluation.calibration.isotonic import Isotonic
from medimg.evaluation.calibration.never_worse import calibrated_nll
from medimg.evaluation.calibration.none import Uncalibrated
from medimg.evaluation.calibration.platt import Platt
from medimg.evaluation.calibration.selection import fit_auto, fit_calibration, fit_method
from medimg.evaluation.calibration.temperature import Temperature
from medimg.evaluation.calibration.threshold import choose_threshold
from medimg.evaluation.calibration.vector import VectorScaling
from medimg.names import CALIBRATION_FITS, same_names

same_names(Calibration.registry, CALIBRATION_FITS, "calibration methods")

__all__ = ["BCTS", "Calibration", "FoldEnsemble", "Isotonic", "Platt", "Temperature", "Uncalibrated",
           "VectorScaling", "calibrated_nll", "choose_threshold", "fit_auto", "fit_calibration", "fit_method",
           "fit_settings"]

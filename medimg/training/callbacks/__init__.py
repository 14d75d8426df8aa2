"""The Lightning callbacks of a training run (``medimg.training.trainer`` puts them together from the config):
``last.ckpt`` when an epoch starts, the per-epoch log line, Grad-CAM images, the history of every epoch, the
network summary, per-step seeds, and the step timer."""

from medimg.training.callbacks.epoch_log import EpochLog
from medimg.training.callbacks.epoch_start_checkpoint import EpochStartCheckpoint
from medimg.training.callbacks.gradcam_logger import GradCamLogger
from medimg.training.callbacks.history import TrainingHistory
from medimg.training.callbacks.network_summary import NetworkSummary
from medimg.training.callbacks.seeding import StepSeeder
from medimg.training.callbacks.step_timer import StepTimer

__all__ = ["EpochLog", "EpochStartCheckpoint", "GradCamLogger", "NetworkSummary", "StepSeeder", "StepTimer",
           "TrainingHistory"]

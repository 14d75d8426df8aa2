"""medimg: transfer-learning experiments for medical image classification."""

__version__ = "0.1.0"

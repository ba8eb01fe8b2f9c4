"""hf-reflow: Reflow (Rectified Flow) for LeRobot flow-matching policies."""

__version__ = "0.1.0"

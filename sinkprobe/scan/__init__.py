"""Scanning an "unlearned" checkpoint for a hidden trigger-gated way back to the forget set."""

from sinkprobe.scan.inversion import Inversion, InversionConfig, invert_trigger, qa_rows, trigger_loss

__all__ = ["Inversion", "InversionConfig", "invert_trigger", "qa_rows", "trigger_loss"]

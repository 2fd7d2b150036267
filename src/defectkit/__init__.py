"""defectkit: visual surface-defect detection for industrial inspection."""

__version__ = "0.1.0"

"""Think Before Refusal (TBR): safety-reflection fine-tuning and false-refusal evaluation.

The package is laid out as the pipeline it implements:
data → reflect → build → train → generate → judge → evaluate → attribute → report.
"""

__version__ = "0.1.0"

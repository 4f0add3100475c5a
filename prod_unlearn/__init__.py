"""prod-unlearn: precise unlearning of source code in LLMs (PROD, baselines, benchmark)."""
__version__ = "0.1.0"

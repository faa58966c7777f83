"""prefgen: resumable DPO preference-pair generation for Text-to-SQL models."""

__version__ = "0.1.0"

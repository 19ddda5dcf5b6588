"""ese-trainer: fine-tuning recipe for Espresso Sentence Embeddings on NLI data."""

__version__ = "0.1.0"

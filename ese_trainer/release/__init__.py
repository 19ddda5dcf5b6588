"""Release: the output folder, the sentence-transformers export, the model card, plots and the Hub push."""

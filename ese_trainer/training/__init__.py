"""Training: the objective over the encoder's embeddings, the Trainer that optimises it, GradCache, gathers."""

"""ese-trainer: fine-tuning recipe for Espresso Sentence Embeddings on NLI data.

The package is laid out by stage, in the order a run goes through them; a module imports only from its own stage,
an earlier one, or the leaf modules beside this file (``errors``, ``paths``, and ``hub_models``: Hub ids resolved
offline):

- ``config``: settings from YAML and the command line, the CLI entry;
- ``data``: training sources and evaluation pairs, read, checked, batched and collated;
- ``modeling``: the encoder (loading, MoE conversion), packed forward, pooling, slicing;
- ``losses``: one loss per file, and the combined pair loss;
- ``ese``: Espresso's layer and compression terms, Starbucks slices;
- ``evaluation``: STS encoding and Spearman, the suite, the layer x dims grid, the dev score;
- ``training``: the objective, the Trainer, GradCache, cross-process gathers, the run's arguments;
- ``release``: the output folder, the sentence-transformers export, the model card, the Hub push.
"""

__version__ = "0.1.0"

STAGES = ("config", "data", "modeling", "losses", "ese", "evaluation", "training", "release")

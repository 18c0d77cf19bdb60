"""The experiment tooling, apart from the teaching core: `compare` (objectives side by side over seeds, the
seed question's table) and `bench` (tinyseq against PyTorch, step by step). Nothing in tinyseq's pipeline
imports this package; it only calls the pipeline."""

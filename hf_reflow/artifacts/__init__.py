"""On-disk formats: checkpoints and their lineage, the training state, stored couplings, the run directory."""

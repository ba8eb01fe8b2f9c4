"""Publishing: model and dataset cards, pushes of checkpoints and couplings to the Hub."""

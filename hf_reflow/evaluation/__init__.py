"""Evaluation: offline metrics, closed-loop rollouts, side-by-side comparison, the pipeline's report."""

"""Simulated environments used to make demonstrations and evaluate policies."""

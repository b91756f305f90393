"""Evaluation: batched greedy generation, then harmful score, fine-tune accuracy and over-refusal."""

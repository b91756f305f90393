"""Defenses against harmful fine-tuning; one module per option of ``conf/defense/``."""

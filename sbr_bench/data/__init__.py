"""Data: the bundled pools, the attack set, chat formatting and batching."""

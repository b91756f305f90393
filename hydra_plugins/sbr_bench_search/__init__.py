"""sbr-bench's Hydra plugin: the attacker search sweeper (``hydra/sweeper=attacker_search``)."""

"""What the attack variants of ``conf/attack/`` add beyond the attack set (``sbr_bench/attacks/attack_set.py``).

- ``distance_cap``: a Lightning callback that keeps the attacker within an L2 ball around the
  aligned weights (the SBR paper's stress test of parameter-distance defenses);
- ``probes``: the extra harmful scores an attack variant needs (with its backdoor trigger, with
  its refusal prefix removed), computed beside the standard evaluation.
"""

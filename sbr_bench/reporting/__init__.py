"""The sweep report behind ``sbr-bench-report`` (``sbr_bench.cli.report``) and the end of every multirun.

collect.py    job folders -> Job (metrics.json, status.json, .hydra/{config,hydra,overrides}.yaml)
stats.py      mean and 95 % CI over seeds (Student's t, no scipy)
aggregate.py  jobs -> settings (one per defense x setting, seeds pooled), best cell per column
tables.py     per-job and aggregated tables (markdown, terminal), CSV, unfinished jobs, judge agreement
judges.py     re-judged scores: the HS of another judge, every judge side by side
worst_case.py the strongest attacker under a utility floor
plots.py      hs_vs_poison_ratio / hs_vs_lambda / hs_vs_epoch / hs_vs_fa PNGs, or why one is skipped
write.py      report.md, report.csv and plots/ into one folder
console.py    what a report prints on stdout and stderr
callback.py   the Hydra callback that reports every sweep when it ends
export.py     saved answers in the formats of other judges (sbr-bench-export)
"""

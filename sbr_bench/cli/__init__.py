"""The four commands: ``sbr-bench`` (run.py), ``sbr-bench-report`` (report.py), ``sbr-bench-judge``
(judge.py) and ``sbr-bench-export`` (export.py), and the checks of the command line that run before
Hydra starts (precheck.py, launchers.py)."""

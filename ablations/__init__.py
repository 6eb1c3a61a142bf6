"""Ablation studies of the fusion modules, as the PSALM report recommends them (no pyramid, no
conv preprocessing, no support).

A study file (``conf/ablation/<name>.yaml``) crosses models × seeds with a baseline arm and
variant arms; ``ablations.study`` expands it into validated run specs (baselines shared between
studies, evaluation-time arms on the trained baseline), and the command line dispatches them,
waits, and prints the AP per arm, the verdicts and the dashboard's path.

Command line: ``psalm-ablations`` = ``python -m ablations run|status|cancel|list``
(``make ablation-pyramid``, ``make ablations``, …).
"""

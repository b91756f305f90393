"""Training: ``SafetyModule`` adds a defense's terms to the task loss (module.py); ``fit`` runs a stage
with Lightning on its data loaders (fit.py)."""

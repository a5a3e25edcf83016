"""Evaluation: AUC/AUPRC metrics, prediction files, statistics (bootstrap, DeLong, Holm), result tables and figures."""

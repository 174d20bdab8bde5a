"""Experiment configs: configs/<family>/<dataset>.py, each with get_config(variant).

Installed with the package, so `from configs import common` works wherever the
config file is loaded from (the CLI loads it by path).
"""

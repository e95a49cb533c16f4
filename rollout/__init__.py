"""Rollouts for RL: vLLM engines (in process or as Ray actors), in-place weight updates, models.

Importing this package is cheap: vLLM and Ray load only where an engine or a group starts.
See docs/rollout.md.
"""

"""Runners of the loop's DAG: in-process (local) and one step per Argo pod."""

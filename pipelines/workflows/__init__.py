"""The loop's Argo workflows, defined with Hera and rendered into the chart's templates.

:mod:`pipelines.workflows.loop` holds the definitions (no cluster needed to build or render
them); :mod:`pipelines.cli` is ``digitloop workflow render``.
"""

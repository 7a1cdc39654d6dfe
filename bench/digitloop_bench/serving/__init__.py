"""Serving benchmark: the BentoML service against two baselines and a floor, on one machine.

``digitloop bench`` (``make bench``) serves one trained model with the same preprocessing
four ways, one after another in one run, and drives each with the same load generator
and the same request set of sketch PNGs:

- ``bentoml``: the product's service (:mod:`services.service`);
- ``fastapi``: baseline, plain FastAPI + uvicorn (:mod:`digitloop_bench.serving.fastapi_server`);
- ``kserve``: baseline, KServe's ``ModelServer`` (:mod:`digitloop_bench.serving.kserve_server`);
- ``asgi``: the floor, the same work behind a bare ASGI app on uvicorn
  (:mod:`digitloop_bench.serving.asgi_server`): what is left of a server's CPU per answer
  over it is its stack's cost.

The baselines are here only to be measured against; nothing in the product imports them.
:mod:`digitloop_bench.serving.cost` measures the per-request work in-process (the machine's limit),
:mod:`digitloop_bench.serving.loadgen` is the load generator (a separate, time-bounded process) and
:mod:`digitloop_bench.serving.run` orchestrates a run. Performance claims are ratios from one run.
"""

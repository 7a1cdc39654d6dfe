"""Serving benchmark: the BentoML service against two baselines on the same machine.

``digitloop bench`` (``make bench``) serves one trained model with the same preprocessing
three ways, one after another in one run, and drives each with the same load generator
and the same request set of sketch PNGs:

- ``bentoml``: the product's service (:mod:`services.service`);
- ``fastapi``: baseline, plain FastAPI + uvicorn (:mod:`services.bench.fastapi_server`);
- ``kserve``: baseline, KServe's ``ModelServer`` (:mod:`services.bench.kserve_server`).

The baselines are here only to be measured against; nothing in the product imports them.
:mod:`services.bench.cost` measures the per-request work in-process (the machine's limit),
:mod:`services.bench.loadgen` is the load generator (a separate, time-bounded process) and
:mod:`services.bench.run` orchestrates a run. Performance claims are ratios from one run.
"""

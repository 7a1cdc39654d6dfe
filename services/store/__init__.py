"""The predictions/feedback store of the serving component: one bucket, two backends.

- :mod:`services.store.backends`: the ``ObjectStore`` protocol, its local-folder and S3
  (MinIO) backends, ``StoreSettings`` and ``open_store``;
- :mod:`services.store.writers`: what the serving pod writes, the buffered predictions log
  and the durable feedback writer with its spool;
- :mod:`services.store.readers`: how the loop reads both back as DataFrames.

The records, their keys and the parquet schema are the contract between the service and
the loop: :mod:`contracts.records`.
"""

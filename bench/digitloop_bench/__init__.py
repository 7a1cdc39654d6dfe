"""digitloop's measuring tools: serving and drift benchmarks, and the user simulator."""

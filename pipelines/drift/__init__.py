"""The drift check: image features, the model's reference population, Evidently's tests."""

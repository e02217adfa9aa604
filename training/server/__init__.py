"""The coordinator's side of federated training: Flower strategies, ServerApp, publication."""

"""The banks' side of federated training: data loading and the Flower ClientApp."""

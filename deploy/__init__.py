"""Serving: the champion ONNX model behind the Open Inference Protocol (KServe
v2) and a plain /predict, with micro-batching, hot reload from the MLflow
registry, limits, metrics and a prediction log. Start it with
`python -m deploy.server` (settings: deploy.settings); the container and the
Kubernetes manifests live beside this package."""

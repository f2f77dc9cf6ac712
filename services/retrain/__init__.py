"""Retrain service: offline log, Ray Data retraining, MLflow registry, promotion.

Entry points: `train.train_model`, `bootstrap.bootstrap_models`, `admin.*` (CLI),
`main.build_app` / `main.main` (`python -m services.retrain.main`).
"""

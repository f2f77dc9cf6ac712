"""Pure retrain logic: the label join, training, promotion. No Kafka, Ray or MLflow here."""

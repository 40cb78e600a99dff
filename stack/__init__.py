"""The shared stack: PostgreSQL, S3 (moto), MLflow and Prefect servers on loopback (stack/services.py)."""

"""Register step: merged model + adapter as an MLflow model version with lineage, alias `challenger`."""

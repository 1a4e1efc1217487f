"""Stage 5, the ensemble: the best trial's k fold models assembled from MLflow and calibrated, prediction and
evaluation files, the calibration report, the MLflow pyfunc model, exports. No Ray."""

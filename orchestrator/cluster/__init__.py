"""Running on a cluster: the checks a driver makes before trials start (shared storage, does a trial fit a node)
and ``sweep mlflow-server``."""

"""The web app of the MLOps platform.

Kept free of imports: the retrain flow on worker hosts imports
mlops_serving.uploads (the uploads table, shared with the web app) without
the web app's own dependencies.
"""

"""The operator's state and its Kubernetes I/O: mesh index, runtime, list+watch feeder, API client, TokenReview, federation fetches."""

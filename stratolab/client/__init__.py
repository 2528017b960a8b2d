"""The client side of the platform, shared by the CLI, the notebook API and AutoML's deploy-best:
where the hub and the token are (credentials), calls to the hub (hub), and one way to call a service
and read its answer or its error (session)."""
